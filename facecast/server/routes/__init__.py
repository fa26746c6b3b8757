"""The API's routers, one per resource; facecast.server.app assembles them."""
