"""Exact derivatives of the energy of one structure: the Hessian (``hessian``), the
elastic tensor (``elastic``), phonons (``phonons``) and third-order force constants
(``anharmonic``) from them, the check that a structure is at a minimum
(``minimum``), and the compiled, memory-bounded chunks they share (``chunks``)."""
