"""Scenario families (multicell, cellfree, ...) and channel-file I/O; entry point: dsim.scenarios.build."""
