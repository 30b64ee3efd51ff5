"""The REST routes (docs/architecture.md, "REST API"), one router per resource."""
