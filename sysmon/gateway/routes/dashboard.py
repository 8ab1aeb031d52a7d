"""The dashboard: index.html at /, and the built assets (app modules, uPlot) under /assets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from sysmon.gateway.problems import Problem

BUILD_HINT = "the dashboard is not built: run `make assets` (npm ci and npm run build in web/)"


def default_static_dir() -> Path:
    return Path(str(resources.files("sysmon.gateway"))) / "static"


def install(app: FastAPI, static_dir: Path | None) -> None:
    root = (static_dir or default_static_dir()).resolve()
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        page = root / "index.html"
        if not page.is_file():
            raise Problem(503, BUILD_HINT, kind="dashboard-not-built")
        # The page is small and names the assets; always revalidate it so an upgrade shows at once.
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount("/assets", StaticFiles(directory=root, check_dir=False), name="assets")
