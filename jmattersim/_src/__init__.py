"""jmattersim's implementation. Its modules are private: import from :mod:`jmattersim`
(and :mod:`jmattersim.jax_md`, :mod:`jmattersim.testing`), whose names are stable."""
