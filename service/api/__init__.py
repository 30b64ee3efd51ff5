"""The HTTP layer: routes (one router per resource) and their typed dependencies."""
