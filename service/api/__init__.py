"""The REST routes of DESIGN §7, one router per resource."""
