"""The per-element models: one width per element (widths, definition) and one radial shape per element
(shape, shape_definition, the default)."""
