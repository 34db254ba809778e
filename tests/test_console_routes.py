"""The console's route discovery: which optional sections and actions the page may show."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from llmspool.producer.console import FEATURES, features


def test_features_follow_the_routes_an_app_serves() -> None:
    app = FastAPI()
    admin = APIRouter(prefix="/admin")

    @admin.post("/workers/{worker:path}/drain")
    async def drain(worker: str) -> None: ...

    @app.get("/v1/batches")
    async def batches() -> None: ...

    app.include_router(admin)
    found = features(app)
    assert set(found) == set(FEATURES)
    assert found["drain"] and found["batches"]
    assert not found["scale"] and not found["requeue"] and not found["feedback"]
