"""Scenario families, one module each, registering a :class:`dsim.registry.FamilySpec`; the generic entry
point (draw / load / save / build through the registry) is :mod:`dsim.scenarios.build`."""
