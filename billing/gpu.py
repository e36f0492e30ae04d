"""GPU time billed from what Triton spent: reconciliation of the gateway's work with Triton's
statistics, and its exact share-out over tenants.

Each rollup pass (``billing.rollup``), once per cluster:

1. **Read** every Triton endpoint's cumulative statistics (``StatisticsSource``), *before* the
   pass drains Redis, so the drained work covers every request Triton had finished by then.
2. **Drain** (the rollup itself): each drain writes the work it carried (batch elements per
   tenant, model and hour) to ``gpu_work_pending`` in the drain's own exactly-once transaction.
3. **Reconcile**, in ONE transaction under an advisory lock: per (endpoint, model, version) the
   delta of the counters against the stored snapshot (``counter_delta``); per model, the summed
   compute time is shared out over the pending work (``share_out``) by largest remainder in
   integer microseconds; the shares are added to ``usage_hourly.gpu_attributed_us``, the
   remainder that no gateway work explains to the reconciliation log as unattributed, the
   snapshots replaced and the consumed work deleted. A kill at any line rolls all of it back:
   the next pass computes the same deltas against the same snapshots, so nothing is lost or
   doubled.

What "GPU time" is: the sum over ``batch_stats`` of compute_input + compute_infer +
compute_output. ``batch_stats`` counts each *execution* once (per batch size), whereas the
per-request ``inference_stats.compute_*`` charge every request of a dynamic batch with the whole
batch's duration, so summing those would count a shared batch once per request.

Work is matched to Triton's ``inference_count`` (batch elements, for a batching model; requests
otherwise): when the gateway's pending work is less than the inferences Triton ran, the missing
part is traffic that did not come through the gateway (direct calls, warm-ups) and its share of
the compute stays unattributed. Work beyond the inferences Triton reported is carried to the next
pass once (its compute lands in the next delta), then dropped (never billed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tenants.settings import Settings

if TYPE_CHECKING:  # imported when first used: every ``maas`` command imports this module
    import grpc
    from tritonclient.grpc import service_pb2_grpc

# pg_advisory_xact_lock key of the reconciliation (one per cluster at a time); "gpu-recon".
RECONCILE_LOCK = 0x67_70_75_2D_72_65_63

_ACCESS_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"  # noqa: S105 (a header name)


# --- Triton's counters ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """Cumulative counters of one model version on one endpoint since that Triton started."""

    model: str
    version: str
    inference_count: int
    execution_count: int
    compute_ns: int  # sum over batch_stats of compute_input + compute_infer + compute_output


@dataclass(frozen=True, slots=True)
class EndpointReading:
    endpoint: str
    models: tuple[ModelCounters, ...]
    batching: Mapping[str, bool]  # model -> max_batch_size > 0


@dataclass(frozen=True, slots=True)
class Reading:
    """All endpoints read at ``read_at``; ``failed`` endpoints make the pass skip reconciling."""

    read_at: datetime
    endpoints: tuple[EndpointReading, ...]
    failed: Mapping[str, str] = field(default_factory=dict)


class StatisticsSource(Protocol):
    async def read(self, endpoint: str) -> EndpointReading: ...


def _duration_ns(stat: Any) -> int:
    return int(stat.ns)


def counters_of(stats: Any, batching: Mapping[str, bool]) -> list[ModelCounters]:
    """``ModelStatisticsResponse`` as counters. A model with no batch_stats (a backend that does
    not report executions) and no batching falls back on its per-request compute, which for a
    non-batching model is per execution too."""
    out = []
    for m in stats.model_stats:
        compute = sum(
            _duration_ns(b.compute_input)
            + _duration_ns(b.compute_infer)
            + _duration_ns(b.compute_output)
            for b in m.batch_stats
        )
        if not m.batch_stats and not batching.get(m.name, False):
            s = m.inference_stats
            compute = (
                _duration_ns(s.compute_input)
                + _duration_ns(s.compute_infer)
                + _duration_ns(s.compute_output)
            )
        out.append(
            ModelCounters(
                m.name, m.version, int(m.inference_count), int(m.execution_count), compute
            )
        )
    return out


class TritonStatistics:
    """Reads Triton's statistics extension over gRPC (``ModelStatistics``, ``ModelConfig``)."""

    def __init__(self, *, access_token: str | None = None, timeout_s: float = 10.0) -> None:
        self._metadata = ((_ACCESS_TOKEN_HEADER, access_token),) if access_token else ()
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, endpoint: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.aio.insecure_channel(endpoint)
        return service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def read(self, endpoint: str) -> EndpointReading:
        from tritonclient.grpc import service_pb2

        stub = self._stub(endpoint)
        md = self._metadata or None
        stats = await stub.ModelStatistics(
            service_pb2.ModelStatisticsRequest(name="", version=""),
            timeout=self._timeout_s,
            metadata=md,
        )
        batching: dict[str, bool] = {}
        for name in sorted({m.name for m in stats.model_stats}):
            config = await stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=name), timeout=self._timeout_s, metadata=md
            )
            batching[name] = int(config.config.max_batch_size) > 0
        return EndpointReading(endpoint, tuple(counters_of(stats, batching)), batching)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def read_all(source: StatisticsSource, endpoints: Sequence[str]) -> Reading:
    read_at = datetime.now(UTC)
    results = await asyncio.gather(*(source.read(e) for e in endpoints), return_exceptions=True)
    ok: list[EndpointReading] = []
    failed: dict[str, str] = {}
    for endpoint, result in zip(endpoints, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            failed[endpoint] = f"{type(result).__name__}: {result}"
        else:
            ok.append(result)
    return Reading(read_at, tuple(ok), failed)


# --- arithmetic (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    inferences: int
    compute_us: int
    restarted: bool


def counter_delta(previous: ModelCounters | None, current: ModelCounters) -> Delta:
    """What Triton did since ``previous``. Counters that went backwards mean Triton restarted
    (they restart from zero), so everything ``current`` holds happened since the restart.

    Microseconds are taken as differences of the floored cumulative values, so the sub-µs parts
    are never lost nor counted twice across passes.
    """
    if previous is None:
        return Delta(current.inference_count, current.compute_ns // 1000, False)
    if (
        current.execution_count < previous.execution_count
        or current.inference_count < previous.inference_count
        or current.compute_ns < previous.compute_ns
    ):
        return Delta(current.inference_count, current.compute_ns // 1000, True)
    return Delta(
        current.inference_count - previous.inference_count,
        current.compute_ns // 1000 - previous.compute_ns // 1000,
        False,
    )


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, in integers that sum to ``total`` exactly:
    each gets the floor of its quota, the units left go to the largest remainders (ties: first
    in order). Every weight 0 (or none) while ``total`` > 0 is an error: nowhere to put it."""
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("largest_remainder: negative total or weight")
    whole = sum(weights)
    if whole == 0:
        if total:
            raise ValueError("largest_remainder: a non-zero total over zero weights")
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


@dataclass(frozen=True, slots=True)
class PendingWork:
    id: int
    tenant_id: uuid.UUID
    hour: datetime
    weight: int  # batch elements (batching model) or requests
    carried: bool


@dataclass(slots=True)
class ShareOut:
    """One model's reconciliation: ``attributed`` + ``unattributed_us`` == measured, exactly."""

    measured_us: int
    inferences: int
    attributed: dict[int, int]  # pending row id -> µs
    consumed: dict[int, int]  # pending row id -> weight units matched
    unattributed_us: int
    work_matched: int


def share_out(measured_us: int, inferences: int, work: Sequence[PendingWork]) -> ShareOut:
    """Share ``measured_us`` (the compute of ``inferences``) over the pending ``work``.

    The work matched is at most ``inferences``; carried work (older) is matched first. Compute is
    split over the matched units plus the unmatched inferences (the unattributed part) by
    largest remainder, so the parts add up to ``measured_us`` with no unit lost or created.
    """
    carried = [w for w in work if w.carried]
    fresh = [w for w in work if not w.carried]
    total_work = sum(w.weight for w in work)
    matched = min(total_work, max(inferences, 0))
    from_carried = min(sum(w.weight for w in carried), matched)
    consumed: dict[int, int] = {}
    for group, units in ((carried, from_carried), (fresh, matched - from_carried)):
        for w, n in zip(group, largest_remainder(units, [w.weight for w in group]), strict=True):
            consumed[w.id] = n
    if measured_us == 0:
        return ShareOut(0, inferences, {w.id: 0 for w in work}, consumed, 0, matched)
    if matched == 0:
        return ShareOut(measured_us, inferences, {w.id: 0 for w in work}, consumed, measured_us, 0)
    ids = [w.id for w in work]
    shares = largest_remainder(measured_us, [consumed[i] for i in ids] + [inferences - matched])
    return ShareOut(
        measured_us,
        inferences,
        dict(zip(ids, shares[:-1], strict=True)),
        consumed,
        shares[-1],
        matched,
    )


# --- the reconciliation ------------------------------------------------------------------------


@dataclass(slots=True)
class ModelSummary:
    model: str
    has_statistics: bool
    measured_us: int = 0
    attributed_us: int = 0
    unattributed_us: int = 0
    inferences: int = 0
    work_matched: int = 0
    work_carried: int = 0
    work_dropped: int = 0
    restarts: int = 0


@dataclass(slots=True)
class ReconcileSummary:
    status: str = "done"  # done | skipped
    reason: str = ""
    models: list[ModelSummary] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_SNAPSHOTS = text(
    "SELECT endpoint, model, version, inference_count, execution_count, compute_ns, read_at "
    "FROM triton_stat_snapshots FOR UPDATE"
)
_PENDING = text(
    "SELECT id, tenant_id, model, hour, requests, work, carried FROM gpu_work_pending "
    "ORDER BY id FOR UPDATE"
)
_UPSERT_SNAPSHOT = text(
    "INSERT INTO triton_stat_snapshots "
    "(endpoint, model, version, inference_count, execution_count, compute_ns, read_at) "
    "VALUES (:endpoint, :model, :version, :inference_count, :execution_count, :compute_ns, "
    ":read_at) ON CONFLICT (endpoint, model, version) DO UPDATE SET "
    "inference_count = excluded.inference_count, execution_count = excluded.execution_count, "
    "compute_ns = excluded.compute_ns, read_at = excluded.read_at"
)
_ATTRIBUTE = text(
    "UPDATE usage_hourly AS h SET gpu_attributed_us = h.gpu_attributed_us + u.us, "
    "gpu_source = :source FROM unnest(CAST(:tenants AS uuid[]), CAST(:hours AS timestamptz[]), "
    "CAST(:us AS bigint[])) AS u(tenant_id, hour, us) "
    "WHERE h.tenant_id = u.tenant_id AND h.model = :model AND h.hour = u.hour"
)
_DELETE_PENDING = text("DELETE FROM gpu_work_pending WHERE id = ANY(CAST(:ids AS bigint[]))")
_CARRY_PENDING = text(
    "UPDATE gpu_work_pending AS p SET carried = true, "
    "work = CASE WHEN CAST(:batching AS boolean) THEN u.remaining ELSE p.work END, "
    "requests = CASE WHEN CAST(:batching AS boolean) THEN p.requests ELSE u.remaining END "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:remaining AS bigint[])) AS u(id, remaining) "
    "WHERE p.id = u.id"
)
_LOG = text(
    "INSERT INTO gpu_reconciliations (model, reconciled_at, measured_us, attributed_us, "
    "unattributed_us, inferences, work_matched, work_dropped, restarts, has_statistics) VALUES "
    "(:model, :reconciled_at, :measured_us, :attributed_us, :unattributed_us, :inferences, "
    ":work_matched, :work_dropped, :restarts, :has_statistics)"
)


def reconciler_for(
    engine: AsyncEngine, settings: Settings
) -> tuple[Reconciler | None, TritonStatistics | None]:
    """The reconciler the settings ask for (None when ``gpu_reconcile`` is off), and its source
    (to close)."""
    if not settings.gpu_reconcile:
        return None, None
    source = TritonStatistics(access_token=settings.triton_access_token)
    return Reconciler(engine, source, settings.stats_endpoints), source


class Reconciler:
    """Polls Triton's statistics and shares each model's compute out over tenants' work."""

    def __init__(
        self, engine: AsyncEngine, source: StatisticsSource, endpoints: Sequence[str]
    ) -> None:
        self._engine = engine
        self._source = source
        self._endpoints = list(dict.fromkeys(endpoints))

    async def read(self) -> Reading:
        return await read_all(self._source, self._endpoints)

    async def reconcile(self, reading: Reading) -> ReconcileSummary:
        """Apply ``reading`` (taken before this pass drained Redis) in one transaction."""
        if reading.failed:
            # A partial reading would match all pending work against part of the compute.
            failed = ", ".join(f"{e} ({why})" for e, why in sorted(reading.failed.items()))
            return ReconcileSummary("skipped", f"statistics unreadable: {failed}")
        async with self._engine.begin() as conn:
            locked = await conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RECONCILE_LOCK}
            )
            if not locked:
                return ReconcileSummary("skipped", "another rollup is reconciling")
            snapshots = {
                (r.endpoint, r.model, r.version): r for r in (await conn.execute(_SNAPSHOTS)).all()
            }
            read_endpoints = {e.endpoint for e in reading.endpoints}
            if any(
                r.read_at >= reading.read_at
                for (endpoint, _, _), r in snapshots.items()
                if endpoint in read_endpoints
            ):
                return ReconcileSummary("skipped", "a newer reading is already reconciled")
            pending = (await conn.execute(_PENDING)).all()
            summary = await self._apply(conn, reading, snapshots, pending)
        return summary

    async def _apply(
        self,
        conn: Any,
        reading: Reading,
        snapshots: Mapping[tuple[str, str, str], Any],
        pending: Iterable[Any],
    ) -> ReconcileSummary:
        deltas: dict[str, list[Delta]] = defaultdict(list)
        batching: dict[str, bool] = {}
        for ep in reading.endpoints:
            batching.update(ep.batching)
            for c in ep.models:
                prev = snapshots.get((ep.endpoint, c.model, c.version))
                previous = (
                    None
                    if prev is None
                    else ModelCounters(
                        c.model,
                        c.version,
                        int(prev.inference_count),
                        int(prev.execution_count),
                        int(prev.compute_ns),
                    )
                )
                deltas[c.model].append(counter_delta(previous, c))
                await conn.execute(
                    _UPSERT_SNAPSHOT,
                    {
                        "endpoint": ep.endpoint,
                        "model": c.model,
                        "version": c.version,
                        "inference_count": c.inference_count,
                        "execution_count": c.execution_count,
                        "compute_ns": c.compute_ns,
                        "read_at": reading.read_at,
                    },
                )
        rows_by_model: dict[str, list[Any]] = defaultdict(list)
        for row in pending:
            rows_by_model[row.model].append(row)
        summary = ReconcileSummary()
        for model in sorted(set(deltas) | set(rows_by_model)):
            rows = rows_by_model.get(model, [])
            if model in deltas:
                result = await self._model(conn, model, deltas[model], batching[model], rows)
            else:
                result = await self._estimated(conn, model, rows)
            summary.models.append(result)
            if result.measured_us or result.work_matched or result.work_dropped or rows:
                await conn.execute(
                    _LOG,
                    {
                        "model": model,
                        "reconciled_at": reading.read_at,
                        "measured_us": result.measured_us,
                        "attributed_us": result.attributed_us,
                        "unattributed_us": result.unattributed_us,
                        "inferences": result.inferences,
                        "work_matched": result.work_matched,
                        "work_dropped": result.work_dropped,
                        "restarts": result.restarts,
                        "has_statistics": result.has_statistics,
                    },
                )
        return summary

    async def _model(
        self, conn: Any, model: str, deltas: list[Delta], batching: bool, rows: list[Any]
    ) -> ModelSummary:
        measured = sum(d.compute_us for d in deltas)
        inferences = sum(d.inferences for d in deltas)
        work = [
            PendingWork(
                int(r.id),
                r.tenant_id,
                r.hour,
                int(r.work) if batching else int(r.requests),
                bool(r.carried),
            )
            for r in rows
        ]
        out = share_out(measured, inferences, work)
        cells: dict[tuple[uuid.UUID, datetime], int] = defaultdict(int)
        done: list[int] = []
        carry_ids: list[int] = []
        carry_left: list[int] = []
        dropped = carried = 0
        for w in work:
            used = out.consumed.get(w.id, 0)
            left = w.weight - used
            if used or left == 0 or w.carried:
                # the cell is billed from attribution from now on (unmatched work is not billed)
                cells[(w.tenant_id, w.hour)] += out.attributed.get(w.id, 0)
            if left == 0:
                done.append(w.id)
            elif w.carried:  # unmatched for a second pass: Triton will not report it
                done.append(w.id)
                dropped += left
            else:
                carry_ids.append(w.id)
                carry_left.append(left)
                carried += left
        await self._write(conn, model, cells, "attributed", done)
        if carry_ids:
            await conn.execute(
                _CARRY_PENDING, {"ids": carry_ids, "remaining": carry_left, "batching": batching}
            )
        return ModelSummary(
            model,
            True,
            measured_us=measured,
            attributed_us=sum(out.attributed.values()),
            unattributed_us=out.unattributed_us,
            inferences=inferences,
            work_matched=out.work_matched,
            work_carried=carried,
            work_dropped=dropped,
            restarts=sum(d.restarted for d in deltas),
        )

    async def _estimated(self, conn: Any, model: str, rows: list[Any]) -> ModelSummary:
        """No endpoint reports statistics for ``model``: its cells are billed from the estimate."""
        cells = {(r.tenant_id, r.hour): 0 for r in rows}
        await self._write(conn, model, cells, "estimated", [int(r.id) for r in rows])
        return ModelSummary(model, False)

    async def _write(
        self,
        conn: Any,
        model: str,
        cells: Mapping[tuple[uuid.UUID, datetime], int],
        source: str,
        done: list[int],
    ) -> None:
        if cells:
            ordered = sorted(cells.items())
            await conn.execute(
                _ATTRIBUTE,
                {
                    "model": model,
                    "source": source,
                    "tenants": [t for (t, _), _us in ordered],
                    "hours": [h for (_, h), _us in ordered],
                    "us": [us for _, us in ordered],
                },
            )
        if done:
            await conn.execute(_DELETE_PENDING, {"ids": done})


# --- the operator's report ----------------------------------------------------------------------

_REPORT_LOG = text(
    "SELECT model, bool_or(has_statistics) AS has_statistics, sum(measured_us) AS measured_us, "
    "sum(attributed_us) AS attributed_us, sum(unattributed_us) AS unattributed_us, "
    "sum(inferences) AS inferences, sum(work_matched) AS work_matched, "
    "sum(work_dropped) AS work_dropped, sum(restarts) AS restarts FROM gpu_reconciliations "
    "WHERE reconciled_at >= :start AND reconciled_at < :end GROUP BY model"
)
_REPORT_TENANTS = text(
    "SELECT h.model, t.id AS tenant_id, t.name, "
    "sum(CASE WHEN h.gpu_source = 'attributed' THEN h.gpu_attributed_us ELSE 0 END) "
    "AS attributed_us, "
    "sum(CASE WHEN h.gpu_source = 'estimated' THEN h.gpu_us ELSE 0 END) AS estimated_us, "
    "sum(CASE WHEN h.gpu_source IS NULL THEN h.gpu_us ELSE 0 END) AS unreconciled_us, "
    "sum(h.work) AS work, sum(h.requests) AS requests "
    "FROM usage_hourly h JOIN tenants t ON t.id = h.tenant_id "
    "WHERE h.hour >= :start AND h.hour < :end GROUP BY h.model, t.id, t.name "
    "ORDER BY h.model, t.name"
)


async def gpu_report(engine: AsyncEngine, start: datetime, end: datetime) -> dict[str, Any]:
    """Per model over ``[start, end)``: GPU time Triton measured (by reconciliation time), its
    attributed and unattributed parts, and per tenant (by usage hour) the attributed time, the
    estimate billed for models without statistics, and the estimate not reconciled yet."""
    async with engine.connect() as conn:
        logs = {r.model: r for r in (await conn.execute(_REPORT_LOG, {"start": start, "end": end}))}
        rows = (await conn.execute(_REPORT_TENANTS, {"start": start, "end": end})).all()
    models: dict[str, dict[str, Any]] = {}

    def entry(model: str) -> dict[str, Any]:
        found = models.get(model)
        if found is None:
            log = logs.get(model)
            found = models[model] = {
                "model": model,
                "has_statistics": None if log is None else bool(log.has_statistics),
                "measured_us": 0 if log is None else int(log.measured_us),
                "attributed_us": 0 if log is None else int(log.attributed_us),
                "unattributed_us": 0 if log is None else int(log.unattributed_us),
                "inferences": 0 if log is None else int(log.inferences),
                "work_matched": 0 if log is None else int(log.work_matched),
                "work_dropped": 0 if log is None else int(log.work_dropped),
                "restarts": 0 if log is None else int(log.restarts),
                "estimated_us": 0,
                "unreconciled_estimate_us": 0,
                "tenants": [],
            }
        return found

    for model in sorted(logs):
        entry(model)
    for r in rows:
        e = entry(r.model)
        e["estimated_us"] += int(r.estimated_us)
        e["unreconciled_estimate_us"] += int(r.unreconciled_us)
        e["tenants"].append(
            {
                "tenant": {"id": str(r.tenant_id), "name": r.name},
                "attributed_us": int(r.attributed_us),
                "estimated_us": int(r.estimated_us),
                "unreconciled_estimate_us": int(r.unreconciled_us),
                "work": int(r.work),
                "requests": int(r.requests),
            }
        )
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "models": [models[m] for m in sorted(models)],
    }
