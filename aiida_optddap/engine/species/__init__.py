"""The per-element models: one width per element (widths, definition), one radial shape per element (shape,
shape_definition) and the default built on it, the shape model moved to the density's own potential outside the
atoms (potential_definition)."""
