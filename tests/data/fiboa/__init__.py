"""fiboa's core schema and a validator for our GeoParquet fields (see README.md)."""
