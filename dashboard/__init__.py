"""fedmezo.dashboard: FastAPI app and browser UI over the server's status service.

`app.create_app(source)` builds the app over a `source.StatusSource`: `GrpcStatusSource` reads a
server's StatusService (the only thing the dashboard reads); tests pass a small fake. The page and its
vendored chart library live in `static/`. `fedmezo dashboard` serves it with uvicorn.
"""
