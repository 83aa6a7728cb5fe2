"""What a compiled program needs while it runs, in bytes, as XLA measures it: the
memory model that sizes batches to a budget (measured, not guessed)."""

from __future__ import annotations


def program_bytes(compiled) -> int:
    """What a compiled program holds while it runs, as XLA counts it: its
    arguments, outputs and temporaries (buffers it aliases counted once), bytes."""
    memory = compiled.memory_analysis()
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
