"""The algorithms of dsim: one module per protocol family (see DESIGN.md section 2)."""
