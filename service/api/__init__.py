"""The HTTP layer: FastAPI app factory, schemas, routes, error mapping and metrics (see app.create_app)."""
