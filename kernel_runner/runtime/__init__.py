"""The composition root: the runner's tree of children and how it is started and stopped (docs/architecture.md
§2). The only package that knows every other."""
