"""The stream steps as plain async functions, and one adapter per vendor."""
