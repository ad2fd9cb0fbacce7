"""Small shared helpers: atomic file writes, instantiation from configs."""
