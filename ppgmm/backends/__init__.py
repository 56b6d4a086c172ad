"""Inference backends. Each is one module; PyMC is imported only inside the PyMC backends."""
