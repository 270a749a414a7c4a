"""``seg-edge serve``'s HTTP API and page (FastAPI): thin routes over the job store and the workers.

Every input defect is answered 4xx with ``{"error": "<one line>"}`` — the line the CLI prints,
naming the client's file — and nothing of the refused upload stays on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from seg_edge import __version__
from seg_edge.card import LABEL_SETS, MODALITIES
from seg_edge.errors import INTERNAL_HTTP_STATUS, INTERNAL_LABEL, InputError, SegEdgeError
from seg_edge.runtime.jobs import failure_reason
from seg_edge.runtime.pictures import legend
from seg_edge.runtime.regions import et_label, label_set
from seg_edge.serve.jobs import ServeConfig, WorkerPool
from seg_edge.serve.store import RESULT_FILES, JobStore, now
from seg_edge.serve.uploads import FORM_HINT, FormReceiver, RequestError, Submission, boundary_of, submission

STATIC = Path(__file__).resolve().parent / "static"
SLACK_BYTES = 1 << 20  # multipart headers and text fields on top of the files
log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def check_case(sub: Submission, card) -> None:
    """Read the uploaded case as the runtime will (every file check) and check its grid against the card."""
    from seg_edge.runtime.io import load_case
    from seg_edge.runtime.resample import check_geometry

    case = load_case(sub.source, card.modalities, sub.file_order)
    source = str(next(iter(case.sources.values())))
    check_geometry(source, case.images.shape[1:], case.spacing,
                   case.affine if case.header is not None else None, card, False)


async def receive(request: Request, folder: Path, limit: int):
    """Stream the request body into ``folder``; RequestError for anything that is not a case upload."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 5 * limit + SLACK_BYTES:
        raise RequestError(f"request of {int(declared) / 2**20:.0f} MB exceeds the limit "
                           f"({limit / 2**20:g} MB per file, the server's --max-upload-mb)", 413)
    receiver = FormReceiver(folder, boundary, limit)
    async for chunk in request.stream():
        receiver.write(chunk)
    return receiver.finish()


def _legend(scheme: str) -> list[dict]:
    """The page's legend for the labels written under ``scheme`` (RC too, for the post-treatment set)."""
    return legend(et_label(scheme), label_set(scheme))


def status_view(record: dict) -> dict:
    """A job's public record: no server paths."""
    hidden = ("inputs",)
    view = {k: v for k, v in record.items() if k not in hidden}
    base = f"/v1/cases/{record['id']}"
    view["links"] = {"self": base, **{name.split(".")[0]: f"{base}/{name}" for name in record.get("files", [])}}
    return view


def _register_cases(app: FastAPI, store: JobStore, pool: WorkerPool, config: ServeConfig) -> None:
    limit = int(config.max_upload_mb * 2**20)
    form_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {
            **{m: {"type": "string", "format": "binary"} for m in (*MODALITIES, "stack")},
            "modalities": {"type": "string", "example": "flair,t1,t1ce,t2"},
            "label_scheme": {"type": "string", "enum": list(LABEL_SETS)},
            "overlap": {"type": "number"}, "probabilities": {"type": "boolean"}}}}}}}

    @app.post("/v1/cases", status_code=202, openapi_extra=form_schema, summary="Submit a case")
    async def submit(request: Request) -> JSONResponse:
        """Upload a case: four NIfTI files (flair, t1, t1ce, t2) or a stack with its modalities."""
        job_id, folder = store.create()
        try:
            form = await receive(request, folder / "inputs", limit)
            sub = submission(form, pool.card.modalities, pool.card.name)
            try:
                await run_in_threadpool(check_case, sub, pool.card)
            except InputError as exc:
                raise RequestError(sub.public(str(exc))) from None
        except BaseException:
            store.discard(folder)
            raise
        record = store.add({
            "id": job_id, "status": "queued", "stage": "queued", "progress": 0.0, "case_id": sub.case_id,
            "created": now(), "names": {f: form.names[f] for f in form.files},
            "inputs": {f: str(p.relative_to(folder)) for f, p in form.files.items()},
            "options": {"label_scheme": sub.label_scheme, "overlap": sub.overlap,
                        "probabilities": sub.probabilities, "modalities": sub.file_order},
            "legend": _legend(sub.label_scheme or pool.card.label_scheme)})
        pool.submit(job_id)
        return JSONResponse(status_view(record), status_code=202, headers={"Location": f"/v1/cases/{job_id}"})


def _register_results(app: FastAPI, store: JobStore, pool: WorkerPool) -> None:
    def _job(job_id: str) -> dict:
        record = store.get(job_id)
        if record is None:
            raise HTTPException(404, f"case {job_id} not found (deleted, or never submitted to this server)")
        return record

    @app.get("/v1/cases", summary="List cases")
    def cases() -> dict:
        return {"cases": [status_view(r) for r in store.listing()]}

    @app.get("/v1/cases/{job_id}", summary="Status, progress, timings, volumes, warnings")
    def case_status(job_id: str) -> dict:
        return status_view(_job(job_id))

    @app.get("/v1/cases/{job_id}/{name}", summary="A result file: labels.nii.gz, report.json, preview.png, "
             "probabilities.nii.gz")
    def case_file(job_id: str, name: str) -> FileResponse:
        record = _job(job_id)
        if name not in RESULT_FILES:
            raise HTTPException(404, f"{name}: no such result (expected one of {', '.join(RESULT_FILES)})")
        if record["status"] != "done":
            raise HTTPException(409, f"case {job_id} is {record['status']} (its results exist once it is done)")
        if name not in record.get("files", []):
            raise HTTPException(404, f"{name}: not made for case {job_id} (probabilities need probabilities=true)")
        download = f"{record['case_id']}_{name}" if name != "preview.png" else f"{record['case_id']}_preview.png"
        return FileResponse(store.folder(job_id) / name, media_type=RESULT_FILES[name], filename=download)

    @app.delete("/v1/cases/{job_id}", status_code=204, summary="Delete a case, its uploads and results")
    def delete(job_id: str) -> Response:
        record = _job(job_id)
        if record["status"] == "running":
            pool.cancel(job_id)
            return JSONResponse({"id": job_id, "status": "deleting"}, status_code=202)
        store.remove(job_id)
        return Response(status_code=204)


def _register_info(app: FastAPI, store: JobStore, pool: WorkerPool, config: ServeConfig) -> None:
    @app.get("/v1/model", summary="The model card")
    def model() -> dict:
        card = pool.card
        return {"name": card.name, "file": Path(config.model).name, "backend": pool.segmenters[0].session.name,
                "modalities": list(card.modalities), "label_scheme": card.label_scheme,
                "legend": _legend(card.label_scheme), "max_upload_mb": config.max_upload_mb,
                "workers": len(pool.segmenters), "card": json.loads(card.to_json())}

    @app.get("/healthz", summary="Liveness and queue")
    def healthz() -> dict:
        alive = sum(t.is_alive() for t in pool.threads)
        return {"status": "ok" if alive == len(pool.segmenters) else "degraded", "version": __version__,
                "workers": len(pool.segmenters), "workers_alive": alive, "jobs": store.counts()}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/manual", include_in_schema=False)
    def manual() -> FileResponse:
        return FileResponse(STATIC / "manual.html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="seg-edge API",
                                   swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg",
                                   swagger_ui_parameters={"validatorUrl": None})  # no call to swagger.io


def _register_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(SegEdgeError)
    async def known_error(request: Request, exc: SegEdgeError) -> JSONResponse:
        return _error(exc.http_status, str(exc))  # the status of its class in seg_edge.errors, as the CLI's code

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client left during %s %s; its upload was discarded", request.method, request.url.path)
        return _error(400, "the client disconnected before the request was complete")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return _error(INTERNAL_HTTP_STATUS, f"{INTERNAL_LABEL}: {failure_reason(exc)} (a bug in seg-edge; the server "
                                            "log has the traceback)")


def create_app(config: ServeConfig) -> FastAPI:
    """The application: loads the model once per worker (errors surface here, before serving)."""
    store = JobStore(config.data)
    try:
        pool = WorkerPool(store, config)
    except BaseException:
        store.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start(store.recover())
        try:
            yield
        finally:
            pool.stop()
            store.close()

    app = FastAPI(title="seg-edge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Brain-tumour segmentation of BraTS-style MRI with a synthetic-data demonstration "
                              "model. Not for clinical use. " + f"Upload {FORM_HINT}.")
    app.state.store, app.state.pool, app.state.config = store, pool, config
    _register_cases(app, store, pool, config)
    _register_results(app, store, pool)
    _register_info(app, store, pool, config)
    _register_errors(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


__all__ = ["ServeConfig", "create_app"]
