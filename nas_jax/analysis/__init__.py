"""Host-side analyses of sampled cells and controller states.

Everything in this package runs on the host, on NumPy arrays, after the
jitted training and sampling code has produced its outputs; none of it is ever
traced or called inside ``jax.jit``. It imports no training code (no
controller, supernet or train loop), only the leaf modules
``nas_jax.search_space``, ``nas_jax.streams`` and ``nas_jax.files``, NumPy,
SciPy and networkx (and matplotlib in ``figures``), so an analysis can be
re-run on saved arrays (``probe.npz``) without building a model.
"""
