"""The gallery in a Milvus collection: student vectors, teacher vectors and image paths, one row per image.

When it is worth it: the local gallery (``index_dir``, faiss) is the fastest choice while the gallery fits in one
machine's memory and one process builds it. Milvus is worth its network round-trips when several writers add
images to one gallery, when the gallery outgrows one machine's memory (a Milvus cluster shards the collection over
query nodes), or when many search processes should share one copy. The same code runs against Milvus Lite (a local
file URI such as ``./gallery.db``, in-process, for tests and small galleries), a Milvus server
(``http://host:19530``) and a cluster or Zilliz Cloud (``https://...`` with a token).

Teacher re-ranking: Milvus searches only the low-dimensional student field, which is cheap to index and to scan.
:meth:`MilvusGallery.search` returns the student top-K for a batch of queries in one round-trip;
:meth:`MilvusGallery.teacher_vectors` fetches the shortlist's high-dimensional teacher rows by id, all distinct ids
of the batch in one query, and the caller re-scores them locally (``einsum`` with the queries' teacher
embeddings) and re-sorts. The teacher field is never searched; it carries a FLAT index only because a Milvus server
refuses to load a collection with an unindexed vector field.

Consistency: the collection uses Milvus's default "Bounded" consistency, so searches do not wait for the newest
writes. :meth:`MilvusGallery.add` flushes (seals the rows into persisted segments, which a server then indexes) and
then runs a "Strong" count, which returns only once the query nodes have caught up with the insert: rows are
searchable when ``add`` returns, also by other clients.

Noise: Milvus Lite does not implement the ``AllocTimestamp`` call that pymilvus makes while it waits for an index to
be built, and gRPC logs each refusal as a traceback (two per gallery: the student and the teacher index); pymilvus
also logs every failed call with its traceback before raising it. Neither says anything the raised error does not,
so :func:`quiet_milvus_logs` drops exactly those records (everything else they log still shows).

Threads: a ``MilvusClient`` may be shared by threads for reads. pymilvus 3 keeps its connections in a locked,
shared registry, its schema cache is locked, and gRPC channels are thread-safe; search, query and count run
concurrently. Writes are serialised by a lock in each :class:`MilvusGallery`, because Milvus Lite does not support
concurrent writers to one collection. Milvus Lite holds a file lock: one process at a time per ``.db`` file.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager

import numpy as np

from ..errors import MissingDependencyError, S2SDError

INSTALL_HINT = "pip install 's2sd-deploy[milvus]'"
METADATA_PROPERTY = "s2sd.metadata"
ID_FIELD, STUDENT_FIELD, TEACHER_FIELD, PATH_FIELD = "id", "student", "teacher", "path"
PATH_MAX_BYTES = 4096  # a Milvus VARCHAR's max_length counts UTF-8 bytes on the server
INSERT_BATCH_ROWS = 1_000  # 1,000 rows of 4096-d teachers are 16 MiB: well inside gRPC message limits
MAX_TOP_K = 16_384  # a Milvus server's default quotaAndLimits.limits.topK (and maxNQ)
MAX_RESULTS_PER_SEARCH = 1_048_576  # queries x k of one request: keeps a reply far below gRPC message limits
MAX_FETCH_BYTES = 32 * 2**20  # teacher rows of one query; a server refuses results over 100 MiB (maxOutputSize)
MAX_FETCH_IDS = 16_384  # bounds the length of the "id in [...]" expression of one query
INDEXES = {
    "flat": ("FLAT", {}),
    "hnsw": ("HNSW", {"M": 32, "efConstruction": 200}),
    "ivf": ("IVF_FLAT", {"nlist": 1024}),
}
HNSW_MIN_EF = 64
IVF_NPROBE = 32


def _pymilvus():
    try:
        import pymilvus
    except ImportError as error:
        raise MissingDependencyError(f"the Milvus backend needs pymilvus and milvus-lite: {INSTALL_HINT}") from error
    quiet_milvus_logs()
    return pymilvus


def _not_unimplemented_method(record: logging.LogRecord) -> bool:
    """gRPC's traceback for a method Milvus Lite does not implement (pymilvus carries on without it)."""
    return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


def _not_a_raised_rpc_error(record: logging.LogRecord) -> bool:
    """pymilvus's traceback of a failed call it then raises (the caller reports the exception)."""
    return record.funcName != "_log_rpc_error"


def _no_traceback_sent_to_the_client(record: logging.LogRecord) -> bool:
    """Milvus Lite's traceback of a request it answers with an error (the client raises that error)."""
    return record.exc_info is None


NOISE_FILTERS = {
    "grpc._server": _not_unimplemented_method,
    "pymilvus.decorators": _not_a_raised_rpc_error,
    "milvus_lite.adapter.grpc.servicer": _no_traceback_sent_to_the_client,
}


def quiet_milvus_logs() -> None:
    """Drop the log records that repeat an error already raised, or that report a call Milvus Lite lacks (see the
    module docstring); idempotent."""
    for name, keep in NOISE_FILTERS.items():
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)


@contextmanager
def _milvus_errors(action: str, uri: str, collection: str, hint: str = ""):
    """Turns pymilvus's exceptions into one-line :class:`S2SDError` messages naming what failed and where."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as error:
        message = " ".join(str(getattr(error, "message", error)).split())
        raise S2SDError(f"Milvus {action} failed for collection {collection!r} at {uri}: {message}{hint}") from error


def _connect(uri: str, token: str | None, collection: str):
    pymilvus = _pymilvus()
    hint = " (Milvus Lite opens a .db file in one process at a time)" if uri.endswith(".db") else ""
    with _milvus_errors("connection", uri, collection, hint):
        return pymilvus.MilvusClient(uri=uri, token=token or "")


def _check_index(index: str) -> None:
    if index not in INDEXES:
        raise S2SDError(f"unknown Milvus index {index!r}; choose one of {', '.join(INDEXES)}")


def _index_params(client, index: str, teacher_dim: int | None):
    index_type, build_params = INDEXES[index]
    params = client.prepare_index_params()
    params.add_index(field_name=STUDENT_FIELD, index_type=index_type, metric_type="IP", params=build_params)
    if teacher_dim:
        params.add_index(field_name=TEACHER_FIELD, index_type="FLAT", metric_type="IP")
    return params


def _gallery_schema(client, student_dim: int, teacher_dim: int | None, metadata_json: str):
    from pymilvus import DataType

    # The description repeats the metadata for servers' UIs (Attu); Milvus Lite keeps only the property.
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=metadata_json)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(STUDENT_FIELD, DataType.FLOAT_VECTOR, dim=student_dim)
    if teacher_dim:
        schema.add_field(TEACHER_FIELD, DataType.FLOAT_VECTOR, dim=teacher_dim)
    schema.add_field(PATH_FIELD, DataType.VARCHAR, max_length=PATH_MAX_BYTES)
    return schema


def _metadata_json(metadata: dict) -> str:
    try:
        return json.dumps(metadata, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise S2SDError(f"gallery metadata must be JSON-serialisable: {error}") from error


def _check_dims(student_dim: int, teacher_dim: int | None) -> None:
    for name, dim in ((STUDENT_FIELD, student_dim), (TEACHER_FIELD, teacher_dim)):
        if dim is not None and (not isinstance(dim, (int, np.integer)) or not 1 <= dim <= 32_768):
            raise S2SDError(f"{name}_dim must be an integer from 1 to 32768 (Milvus's limit), not {dim!r}")


def _vector_dims(description: dict) -> dict[str, int]:
    return {field["name"]: int(field["params"]["dim"]) for field in description["fields"] if "dim" in field["params"]}


def _stored_metadata(description: dict) -> dict:
    text = description.get("properties", {}).get(METADATA_PROPERTY) or description.get("description") or "{}"
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _student_index_type(client, collection: str) -> str:
    names = client.list_indexes(collection, field_name=STUDENT_FIELD)
    return client.describe_index(collection, names[0]).get("index_type", "FLAT") if names else "FLAT"


@contextmanager
def milvus_client(uri: str, token: str | None = None, collection: str = ""):
    """A connected ``MilvusClient``, closed at the end of the block."""
    client = _connect(uri, token, collection)
    try:
        yield client
    finally:
        client.close()


def alias_target(uri: str, alias: str, token: str | None = None) -> str | None:
    """The collection the alias ``alias`` names at ``uri``, or ``None`` when there is no such alias."""
    with milvus_client(uri, token, alias) as client, _milvus_errors("alias lookup", uri, alias):
        if alias not in client.list_aliases().get("aliases", []):
            return None
        return client.describe_alias(alias)["collection_name"]


def point_alias(uri: str, alias: str, collection: str, token: str | None = None) -> None:
    """Make ``alias`` name ``collection`` (created, or moved from the collection it named)."""
    with milvus_client(uri, token, collection) as client, _milvus_errors("alias update", uri, collection):
        if alias in client.list_aliases().get("aliases", []):
            client.alter_alias(collection, alias)
        else:
            client.create_alias(collection, alias)


def collections_named(uri: str, prefix: str, token: str | None = None) -> list[str]:
    """The collections at ``uri`` whose names start with ``prefix``."""
    with milvus_client(uri, token) as client, _milvus_errors("listing", uri, prefix + "*"):
        return sorted(name for name in client.list_collections() if name.startswith(prefix))


def drop_collections(uri: str, names: list[str], token: str | None = None) -> None:
    """Drop the collections ``names`` (the aliases naming them first: a Milvus server refuses otherwise)."""
    with milvus_client(uri, token) as client:
        for name in names:
            with _milvus_errors("drop", uri, name):
                for alias in client.list_aliases(name).get("aliases", []):
                    client.drop_alias(alias)
                client.drop_collection(name)


class MilvusGallery:
    """Student vectors, teacher vectors and paths in one Milvus collection (Milvus Lite file, server or cluster)."""

    def __init__(self, client, uri: str, collection: str, description: dict, index_type: str):
        self._client = client
        self._uri = uri
        self._collection = collection
        dims = _vector_dims(description)
        self.student_dim = dims[STUDENT_FIELD]
        self.teacher_dim = dims.get(TEACHER_FIELD)
        self.index_type = index_type
        self._metadata = _stored_metadata(description)
        self._write_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        uri: str,
        collection: str,
        student_dim: int,
        teacher_dim: int | None,
        metadata: dict,
        index: str = "flat",
        token: str | None = None,
        overwrite: bool = False,
    ) -> MilvusGallery:
        """A new, empty, loaded collection; an existing one is an error unless ``overwrite`` (which drops it)."""
        _check_dims(student_dim, teacher_dim)
        _check_index(index)
        metadata_json = _metadata_json(metadata)
        client = _connect(uri, token, collection)
        try:
            with _milvus_errors("create", uri, collection):
                if client.has_collection(collection):
                    if not overwrite:
                        raise S2SDError(
                            f"Milvus collection {collection!r} already exists at {uri}; "
                            "pass overwrite (--overwrite) to drop and rebuild it, or choose another collection name"
                        )
                    client.drop_collection(collection)
                client.create_collection(
                    collection,
                    schema=_gallery_schema(client, int(student_dim), teacher_dim and int(teacher_dim), metadata_json),
                    index_params=_index_params(client, index, teacher_dim),  # also loads the collection
                    consistency_level="Bounded",
                    properties={METADATA_PROPERTY: metadata_json},
                )
                return cls(client, uri, collection, client.describe_collection(collection), INDEXES[index][0])
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(cls, uri: str, collection: str, token: str | None = None) -> MilvusGallery:
        """An existing gallery, loaded for search (a no-op when it already is)."""
        client = _connect(uri, token, collection)
        try:
            with _milvus_errors("open", uri, collection):
                if not client.has_collection(collection):
                    raise S2SDError(f"no Milvus collection {collection!r} at {uri}; build the gallery first")
                description = client.describe_collection(collection)
                if STUDENT_FIELD not in _vector_dims(description):
                    raise S2SDError(f"Milvus collection {collection!r} at {uri} is not an s2sd gallery")
                client.load_collection(collection)
                return cls(client, uri, collection, description, _student_index_type(client, collection))
        except BaseException:
            client.close()
            raise

    def add(self, ids: np.ndarray, student: np.ndarray, teacher: np.ndarray | None, paths: list[str]) -> None:
        """Inserts rows in batches of :data:`INSERT_BATCH_ROWS`, flushes; they are searchable when this returns.

        Ids must be new: a Milvus server stores an id added twice twice (Milvus Lite replaces the row). A server
        rate-limits flushes (by default one per 10 s per collection; pymilvus waits and retries), so add large
        chunks, not one embedding batch at a time.
        """
        ids, student, teacher, paths = self._checked_rows(ids, student, teacher, paths)
        with self._write_lock, self._errors("insert"):
            for start in range(0, len(ids), INSERT_BATCH_ROWS):
                rows = self._rows(ids, student, teacher, paths, slice(start, start + INSERT_BATCH_ROWS))
                self._client.insert(self._collection, rows)
            self._client.flush(self._collection)
            self.count()  # a Strong read: returns once the query nodes have applied the insert

    def search(self, queries: np.ndarray, k: int, search_params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (Q, k), ids int64 (Q, k)) by inner product, best first, padded with -inf / -1.

        ``search_params`` are the index's search parameters (``{"ef": 128}``, ``{"nprobe": 64}``); defaults:
        HNSW ``ef = max(64, k)``, IVF ``nprobe = 32``. One round-trip per batch (split only past
        :data:`MAX_RESULTS_PER_SEARCH` results or :data:`MAX_TOP_K` queries).
        """
        queries = self._checked_queries(queries)
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_TOP_K:
            raise S2SDError(f"k must be an integer from 1 to {MAX_TOP_K} (Milvus's top-k limit), not {k!r}")
        request_params = {"metric_type": "IP", "params": {**self._default_search_params(k), **(search_params or {})}}
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        batch = max(1, min(MAX_TOP_K, MAX_RESULTS_PER_SEARCH // k))
        with self._errors("search"):
            for start in range(0, len(queries), batch):
                results = self._client.search(
                    self._collection,
                    data=queries[start : start + batch],
                    limit=int(k),
                    anns_field=STUDENT_FIELD,
                    output_fields=[ID_FIELD],  # none would make Milvus Lite return every field
                    search_params=request_params,
                )
                self._scatter_hits(results, scores, ids, start)
        return scores, ids

    def teacher_vectors(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 (Q, K), -1 padding allowed -> float32 (Q, K, D) in the same order; padding rows are 0."""
        if not self.teacher_dim:
            raise S2SDError(f"Milvus collection {self._collection!r} at {self._uri} has no teacher vectors")
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        table = np.zeros((len(unique), self.teacher_dim), dtype=np.float32)
        fetched_ids, vectors = self._fetch(unique[unique >= 0], TEACHER_FIELD)
        table[np.searchsorted(unique, fetched_ids)] = vectors
        return table[inverse].reshape(*ids.shape, self.teacher_dim)

    def paths(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 of any shape -> str array of the same shape, "" for -1."""
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        table = np.full(len(unique), "", dtype=object)
        fetched_ids, paths = self._fetch(unique[unique >= 0], PATH_FIELD)
        table[np.searchsorted(unique, fetched_ids)] = paths
        return table[inverse].reshape(ids.shape).astype(str)

    def count(self) -> int:
        """Rows in the collection, read with Strong consistency (all acknowledged inserts counted)."""
        with self._errors("count"):
            rows = self._client.query(
                self._collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
        return int(rows[0]["count(*)"])

    def metadata(self) -> dict:
        return dict(self._metadata)

    def close(self) -> None:
        """Closes this client's connection; Milvus Lite's in-process server stops when the process exits."""
        self._client.close()

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _errors(self, action: str):
        return _milvus_errors(action, self._uri, self._collection)

    def _default_search_params(self, k: int) -> dict:
        if self.index_type.startswith("HNSW"):
            return {"ef": max(HNSW_MIN_EF, int(k))}  # a server refuses ef < k
        if self.index_type.startswith("IVF"):
            return {"nprobe": IVF_NPROBE}
        return {}

    @staticmethod
    def _scatter_hits(results, scores: np.ndarray, ids: np.ndarray, start: int) -> None:
        for row, hits in enumerate(results, start):
            found = len(hits.ids)
            ids[row, :found] = hits.ids
            scores[row, :found] = hits.distances

    def _fetch(self, ids: np.ndarray, field: str) -> tuple[np.ndarray, np.ndarray | list]:
        """(ids as stored, values) of ``field`` for the distinct ``ids``, in Milvus's order; an error if any is
        missing. One query unless the values exceed :data:`MAX_FETCH_BYTES` or :data:`MAX_FETCH_IDS`."""
        row_bytes = 4 * self.teacher_dim if field == TEACHER_FIELD else PATH_MAX_BYTES
        batch = max(1, min(MAX_FETCH_IDS, MAX_FETCH_BYTES // row_bytes))
        rows = []
        with self._errors(f"{field} fetch"):
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch].tolist()
                rows += self._client.query(self._collection, ids=chunk, output_fields=[field], strict_float32=True)
        fetched_ids = np.fromiter((row[ID_FIELD] for row in rows), dtype=np.int64, count=len(rows))
        self._check_all_found(ids, fetched_ids)
        if field == TEACHER_FIELD:
            return fetched_ids, np.asarray([row[field] for row in rows], dtype=np.float32).reshape(-1, self.teacher_dim)
        return fetched_ids, [row[field] for row in rows]

    def _check_all_found(self, wanted: np.ndarray, fetched: np.ndarray) -> None:
        missing = np.setdiff1d(wanted, fetched)
        if len(missing):
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise S2SDError(
                f"{len(missing)} ids are not in Milvus collection {self._collection!r} at {self._uri}: {shown}"
            )

    def _checked_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.student_dim:
            raise S2SDError(f"queries must have shape (Q, {self.student_dim}) (the student dim), not {queries.shape}")
        return np.ascontiguousarray(queries)

    def _checked_rows(self, ids, student, teacher, paths):
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise S2SDError(f"ids must be a 1-d integer array, not {ids.dtype} of shape {ids.shape}")
        if len(ids) and ids.min() < 0:
            raise S2SDError("ids must be non-negative (-1 marks padding in search results)")
        if len(np.unique(ids)) != len(ids):
            raise S2SDError("ids must be distinct")
        student = self._checked_vectors(STUDENT_FIELD, student, len(ids), self.student_dim)
        if (teacher is None) != (self.teacher_dim is None):
            stored = "stores" if self.teacher_dim else "has no"
            raise S2SDError(f"Milvus collection {self._collection!r} {stored} teacher vectors: pass teacher to match")
        if teacher is not None:
            teacher = self._checked_vectors(TEACHER_FIELD, teacher, len(ids), self.teacher_dim)
        return ids.astype(np.int64), student, teacher, self._checked_paths(paths, len(ids))

    @staticmethod
    def _checked_vectors(name: str, vectors, rows: int, dim: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (rows, dim):
            raise S2SDError(f"{name} vectors must have shape ({rows}, {dim}) (ids, {name} dim), not {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise S2SDError(f"{name} vectors contain NaN or infinite values")
        return vectors

    @staticmethod
    def _checked_paths(paths, rows: int) -> list[str]:
        paths = [str(path) for path in paths]
        if len(paths) != rows:
            raise S2SDError(f"got {len(paths)} paths for {rows} ids; one path per id")
        too_long = [path for path in paths if len(path.encode("utf-8")) > PATH_MAX_BYTES]
        if too_long:
            raise S2SDError(f"{len(too_long)} paths exceed {PATH_MAX_BYTES} UTF-8 bytes, e.g. {too_long[0][:80]!r}...")
        return paths

    @staticmethod
    def _rows(ids, student, teacher, paths, rows: slice) -> list[dict]:
        # tolist() converts in C; pymilvus would otherwise iterate numpy scalars one by one.
        columns = {ID_FIELD: ids[rows].tolist(), STUDENT_FIELD: student[rows].tolist(), PATH_FIELD: paths[rows]}
        if teacher is not None:
            columns[TEACHER_FIELD] = teacher[rows].tolist()
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
