"""The example's primitives, one per module, found by the framework by name."""
