"""The algorithms of dsim: one module per protocol family, each registering its
:class:`dsim.registry.AlgorithmSpec` (see DESIGN.md sections 2 and 10)."""
