"""The W&B backend: a registry over a W&B server's GraphQL API (cloud or self-hosted).

It reads everything, and makes the edits W&B's API offers (the SDK's ``Artifact.save()`` of a
logged artifact, ``delete()``, ``link()``); it does not log new versions (``writable`` stays
False: that is the wandb SDK's job, or a local registry's).

What it asks the server, and when:

* **At construction**, one ``Viewer`` query: it checks the API key and that the server speaks
  W&B, so a mount fails at once, in one line that says what to do.
* **Namespace**: one cheap query per existence check (``entity(name)``, ``project(...)``),
  paginated listings, and ``project_versions`` as nested pages (a page of collections with the
  first page of each one's versions per call), so a project directory costs a bounded number of
  calls, not one per collection.  ``resolve`` is one ``artifactCollectionMembership`` call.
* **Manifests** are fetched once per artifact (``FetchArtifactManifest``, then a plain GET of
  the presigned URL), checked (entry paths, duplicate keys, file/directory clashes, the
  artifact digest) and kept on disk under ``cache_dir/manifests`` keyed by artifact id and
  digest, so a remount asks for none of them again.  Each is indexed on disk as it is kept
  (``registry/remote.py``, ``index.py``): ``list_dir``/``get_entry`` are SQLite lookups in
  place, and no manifest is held in memory.
* **File URLs** are asked for only for files being read (``files(names: [...])``), in batches:
  the wanted file plus the next files of its directory that have no URL yet, in the order a
  directory walk reads them (name order).  The whole file list is never paged (W&B #7006).  An
  URL refused with 401/403 (expired) is replaced by a fresh one for that file only (#5678).
* **Bytes** go through :func:`artifactfs.http.download` (timeouts, retries, resume, parallel
  ranges); the store verifies them.  A copy in the wandb SDK's cache is offered first, as a
  source the store re-verifies and falls back from; the SDK cache is never written.
* **Edits** are the SDK's mutations, same names and input shapes: ``AddAliases`` /
  ``DeleteAliases`` (``add_alias``/``remove_alias``), ``UpdateArtifact`` (``update``: description,
  metadata), ``DeleteArtifact`` (``delete``; ``UnlinkArtifact`` when the reference names a link),
  ``LinkArtifact`` (``link``).  Each resolves the reference first (for the artifact id) and
  resolves the version again afterwards, so what it returns is what the server now says; nothing
  here caches a resolution, so no edit can leave a stale alias behind in this registry.  A
  refusal becomes AuthError (permission), ArtifactNotFound, Conflict, InvalidArgument or
  RegistryError by what its message says (W&B's errors carry no codes).
* **Lineage**: ``logged_by``/``used_by`` ask ``artifact(id) { createdBy / usedBy }`` for the
  runs' id, display name, job type, state, config and creation time; ``run``/``runs`` ask
  ``project { run(name) / runs }``, ``run_outputs``/``run_inputs`` the run's
  ``outputArtifacts``/``inputArtifacts`` (paged); ``default_entity`` is the viewer's entity.
  Runs are never created here (``create_run``, ``record_use`` stay refused).

Secrets: the API key lives in one attribute and in the requests' ``Authorization`` header; it is
never logged, never put in an exception message or a repr, and any text a server sends back is
scrubbed of it before it is shown.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import io
import json
import logging
import netrc
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import requests
import requests.auth

from .. import http, transfer
from ..checks import FAIL, OK, Check
from ..errors import (
    ArtifactFSError,
    ArtifactNotFound,
    AuthError,
    Conflict,
    EntityNotFound,
    FetchError,
    InvalidArgument,
    InvalidReference,
    ManifestError,
    ProjectNotFound,
    ReadOnly,
    RegistryError,
    RunNotFound,
)
from ..fsutil import redact_uri
from ..index import ManifestIndex
from ..manifest import MD5, XXH128, Entry, Manifest, hex_from_b64
from ..names import (
    LATEST,
    Ref,
    check_alias,
    check_entry_path,
    is_registry_project,
    json_object_text,
    parse_ref,
    parse_version,
)
from ..sources import BlobSource, Progress
from .base import DELETED, CollectionInfo, DirEntry, OrgInfo, Registry, RunInfo, VersionInfo
from .remote import MAX_MANIFEST_BYTES, ManifestKeeper

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
URL_PAGE = 500  # file URLs per files(names:) request when the fetch engine asks ahead
MANIFEST_MD5 = "MANIFEST_MD5"
MANIFEST_XXH128 = "MANIFEST_XXH128"


@dataclass(frozen=True, slots=True)
class GraphQLPolicy:
    """Timeouts and retry bounds of one GraphQL call (or one manifest GET)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 8  # tries per call
    backoff: float = 0.5  # first wait; doubled per failure up to backoff_max, with jitter
    backoff_max: float = 10.0
    retry_after_max: float = 30.0  # a longer Retry-After gives up at once
    budget: float = 120.0  # seconds of waiting between tries, per call
    deadline: float = 300.0  # no new try starts later than this after the first, per call


DEFAULT_POLICY = GraphQLPolicy()
# The construction check fails fast: a wrong URL should not take minutes to report.
CONNECT_POLICY = GraphQLPolicy(connect_timeout=10.0, read_timeout=20.0, attempts=3, budget=5.0, deadline=30.0)


@dataclass(frozen=True, slots=True)
class WandbVersionInfo(VersionInfo):
    """A version as W&B names it.  ``source`` is set when it is a link (a member of a linked
    collection, W&B's portfolio): where its artifact was logged, ``entity/project/name:vN``
    (read as ``getattr(version, "source", None)``; every other registry has no links of its own
    to tell apart yet)."""

    source: Ref | None = None


# -- query texts (field names as the W&B schema has them; see the SDK's _generated/operations.py)

_PAGE_INFO = "pageInfo { endCursor hasNextPage }"


def _version_fields(digest_algorithm: bool) -> str:
    alg = " digestAlgorithm" if digest_algorithm else ""
    return (
        "id versionIndex description metadata state size digest" + alg + " commitHash fileCount"
        " createdAt updatedAt artifactType { name }"
        " artifactSequence { name project { name entity { name } } }"
        " aliases { alias artifactCollection { name project { name entity { name } } } }"
    )


VIEWER_QUERY = "query Viewer { viewer { id entity username teams { edges { node { name } } } } }"
CHECK_ENTITY_QUERY = "query CheckEntity($entity: String!) { entity(name: $entity) { id name } }"
CHECK_PROJECT_QUERY = (
    "query CheckProject($entity: String!, $project: String!) {"
    " entity(name: $entity) { id }"
    " project(name: $project, entityName: $entity) { id name } }"
)
PROJECTS_QUERY = (  # models(): the SDK's GetProjects; entity(): the existence check, same call
    "query EntityProjects($entity: String!, $cursor: String, $perPage: Int) {"
    " entity(name: $entity) { id }"
    " models(entityName: $entity, after: $cursor, first: $perPage) {"
    f" {_PAGE_INFO} edges {{ node {{ name }} }} }} }}"
)
COLLECTIONS_QUERY = (
    "query ProjectArtifactCollections($entity: String!, $project: String!, $cursor: String, $perPage: Int) {"
    " project(name: $project, entityName: $entity) { artifactCollections(after: $cursor, first: $perPage) {"
    f" {_PAGE_INFO} edges {{ node {{ id name description createdAt"
    " defaultArtifactType { name } artifacts(first: 0) { totalCount } } } } } }"
)
FEATURES_QUERY = "query ServerFeaturesQuery { serverInfo { features { name isEnabled } } }"
# The SDK's FetchOrgInfoFromEntity: a team's organization, or the organizations of the user whose
# entity it is (asked of the viewer's own entity for the mount root).
ORG_INFO_QUERY = (
    "query FetchOrgInfoFromEntity($entity: String!) { entity(name: $entity) {"
    " organization { name orgEntity { name } } user { organizations { name orgEntity { name } } } } }"
)
REGISTRIES_QUERY = (  # the SDK's FetchRegistries, asking only names; needs ARTIFACT_REGISTRY_SEARCH
    "query FetchRegistries($organization: String!, $cursor: String, $perPage: Int) {"
    " organization(name: $organization) { orgEntity { name projects(after: $cursor, first: $perPage) {"
    f" {_PAGE_INFO} edges {{ node {{ name }} }} }} }} }} }}"
)
REGISTRY_SEARCH = "ARTIFACT_REGISTRY_SEARCH"
MANIFEST_QUERY = (
    "query FetchArtifactManifest($id: ID!) { artifact(id: $id) { currentManifest { file { directUrl } } } }"
)


def _versions_query(alg: bool) -> str:
    return (
        "query CollectionVersions($entity: String!, $project: String!, $collection: String!,"
        " $cursor: String, $perPage: Int) {"
        " project(name: $project, entityName: $entity) { artifactCollection(name: $collection) {"
        " name artifacts(after: $cursor, first: $perPage) {"
        f" {_PAGE_INFO} edges {{ version node {{ {_version_fields(alg)} }} }} }} }} }} }}"
    )


def _project_versions_query(alg: bool) -> str:
    return (
        "query ProjectVersions($entity: String!, $project: String!, $cursor: String, $perPage: Int,"
        " $versionsPerCollection: Int) {"
        " project(name: $project, entityName: $entity) { artifactCollections(after: $cursor, first: $perPage) {"
        f" {_PAGE_INFO} edges {{ node {{ name artifacts(first: $versionsPerCollection) {{"
        f" {_PAGE_INFO} edges {{ version node {{ {_version_fields(alg)} }} }} }} }} }} }} }} }}"
    )


def _membership_query(alg: bool) -> str:
    return (
        "query ArtifactMembershipByName($entity: String!, $project: String!, $name: String!) {"
        " project(name: $project, entityName: $entity) { artifactCollectionMembership(name: $name) {"
        " id versionIndex aliases { alias } artifactCollection { __typename id name }"
        f" artifact {{ {_version_fields(alg)} }} }} }} }}"
    )


def _artifact_by_name_query(alg: bool) -> str:
    """Older servers: ``project.artifact(name: "collection:alias")``."""
    return (
        "query ArtifactByName($entity: String!, $project: String!, $name: String!) {"
        " project(name: $project, entityName: $entity) {"
        f" artifact(name: $name) {{ {_version_fields(alg)} }} }} }}"
    )


def _artifact_by_id_query(alg: bool) -> str:
    return f"query ArtifactByID($id: ID!) {{ artifact(id: $id) {{ {_version_fields(alg)} }} }}"


FILE_URLS_QUERY = (
    "query GetArtifactMembershipFileUrls($entity: String!, $project: String!, $collection: String!,"
    " $alias: String!, $names: [String!], $perPage: Int) {"
    " project(name: $project, entityName: $entity) { artifactCollection(name: $collection) {"
    " artifactMembership(aliasName: $alias) { files(names: $names, first: $perPage) {"
    " edges { node { name directUrl } } } } } } }"
)
FILE_URLS_BY_ID_QUERY = (  # servers without collection memberships
    "query ArtifactFileUrls($id: ID!, $names: [String!], $perPage: Int) {"
    " artifact(id: $id) { files(names: $names, first: $perPage) { edges { node { name directUrl } } } } }"
)

# -- mutations (as the SDK 0.31 sends them: ``result: <field>(input: $input)``)

ADD_ALIASES_MUTATION = "mutation AddAliases($input: AddAliasesInput!) { result: addAliases(input: $input) { success } }"
DELETE_ALIASES_MUTATION = (
    "mutation DeleteAliases($input: DeleteAliasesInput!) { result: deleteAliases(input: $input) { success } }"
)
UPDATE_ARTIFACT_MUTATION = (
    "mutation UpdateArtifact($input: UpdateArtifactInput!) {"
    " result: updateArtifact(input: $input) { artifact { id } } }"
)
DELETE_ARTIFACT_MUTATION = (
    "mutation DeleteArtifact($input: DeleteArtifactInput!) {"
    " result: deleteArtifact(input: $input) { artifact { id } } }"
)
UNLINK_ARTIFACT_MUTATION = (
    "mutation UnlinkArtifact($input: UnlinkArtifactInput!) { result: unlinkArtifact(input: $input) { success } }"
)
LINK_ARTIFACT_MUTATION = (  # versionIndex only: older servers lack artifactMembership in the answer
    "mutation LinkArtifact($input: LinkArtifactInput!) { result: linkArtifact(input: $input) { versionIndex } }"
)

# -- lineage

_RUN_FIELDS = "name displayName jobType state config createdAt project { name entity { name } }"
CREATED_BY_QUERY = (
    "query ArtifactCreatedBy($id: ID!) { artifact(id: $id) {"
    f" createdBy {{ __typename ... on Run {{ {_RUN_FIELDS} }} }} }} }}"
)
USED_BY_QUERY = (  # no page arguments, as the SDK asks: the server's page is all there is
    f"query ArtifactUsedBy($id: ID!) {{ artifact(id: $id) {{ usedBy {{ edges {{ node {{ {_RUN_FIELDS} }} }} }} }} }}"
)
_RUN_INTERNAL_KEYS = ("_wandb", "wandb_version")  # what W&B keeps in a config besides the user's
RUN_QUERY = (
    "query Run($entity: String!, $project: String!, $run: String!) {"
    f" project(name: $project, entityName: $entity) {{ run(name: $run) {{ {_RUN_FIELDS} }} }} }}"
)
RUNS_QUERY = (
    "query ProjectRuns($entity: String!, $project: String!, $cursor: String, $perPage: Int, $order: String) {"
    " project(name: $project, entityName: $entity) { runs(after: $cursor, first: $perPage, order: $order) {"
    f" {_PAGE_INFO} edges {{ node {{ {_RUN_FIELDS} }} }} }} }} }}"
)


def _run_artifacts_query(op: str, field: str, alg: bool) -> str:
    """A run's ``outputArtifacts``/``inputArtifacts``, paged (as the SDK's RunOutputArtifacts)."""
    return (
        f"query {op}($entity: String!, $project: String!, $run: String!, $cursor: String, $perPage: Int) {{"
        " project(name: $project, entityName: $entity) { run(name: $run) {"
        f" artifacts: {field}(after: $cursor, first: $perPage) {{"
        f" {_PAGE_INFO} edges {{ node {{ {_version_fields(alg)} }} }} }} }} }} }}"
    )


_MISSING_FIELD = re.compile(r"""Cannot query field ["']([A-Za-z_][A-Za-z0-9_]*)["']""")
_NOT_FOUND = re.compile(r"not found|does not exist|no such", re.IGNORECASE)
# What a refused mutation's message says, in the order tried (W&B sends no error codes).
_PERMISSION = re.compile(r"permission|not authori[sz]ed|unauthori[sz]ed|forbidden|access denied", re.IGNORECASE)
_CONFLICT = re.compile(r"already exists|conflict|has aliases|reserved|does not match|in use|not allowed", re.IGNORECASE)
_INVALID = re.compile(r"\binvalid\b|must be|expected", re.IGNORECASE)


# -- credentials -----------------------------------------------------------------------------


def netrc_path() -> str:
    return os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")


def find_api_key(base_url: str) -> tuple[str | None, str]:
    """The API key for ``base_url`` and where it was looked for (for the error message):
    ``WANDB_API_KEY``, else the netrc password of the base URL's host (``host:port`` or
    ``host``, as ``wandb login`` writes either)."""
    key = os.environ.get("WANDB_API_KEY", "").strip()
    if key:
        return key, "WANDB_API_KEY"
    path = netrc_path()
    if not os.path.exists(path):
        return None, f"WANDB_API_KEY is not set and there is no {path}"
    try:
        parsed = netrc.netrc(path)
    except netrc.NetrcParseError as exc:  # its message may quote a token: show only where
        raise AuthError(f"cannot parse {path} (line {exc.lineno}): fix it or set WANDB_API_KEY") from None
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    split = urllib.parse.urlsplit(base_url)
    for machine in dict.fromkeys(filter(None, (split.netloc, split.hostname))):
        auth = parsed.authenticators(machine)
        if auth is not None and auth[2]:
            return auth[2].strip(), path
    return None, f"WANDB_API_KEY is not set and {path} has no password for {split.hostname}"


class _MissingField(Exception):
    """The server's schema lacks a field we asked for (an older server)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def parse_manifest(data: bytes, version: VersionInfo) -> Manifest:
    """Parse and check a manifest: entry paths (no ``..``, absolute paths, NUL...), duplicate
    keys, and that its entries hash to the artifact's digest."""
    manifest = Manifest.loads(data)
    if version.digest:
        alg = XXH128 if version.digest_algorithm == MANIFEST_XXH128 else MD5
        actual = manifest.digest(alg)
        if actual != version.digest:
            raise ManifestError(
                f"manifest of {version.ref} does not match the artifact digest "
                f"(artifact {version.digest}, manifest {actual}): refusing it"
            )
    return manifest


# -- small parsers -----------------------------------------------------------------------------


def parse_time_ns(text: Any) -> int:
    """W&B times (``2026-11-27T17:35:29``, maybe with fraction and ``Z``; naive means UTC)."""
    if not isinstance(text, str) or not text:
        return 0
    try:
        dt = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return 0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.UTC)
    delta = dt - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (delta // _dt.timedelta(microseconds=1)) * 1000


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _viewer_name(viewer: dict[str, Any]) -> str:
    """The entity a ``viewer`` answer signs in (its username when it names no entity)."""
    return _str(viewer.get("entity")) or _str(viewer.get("username"))


def _metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            obj = json.loads(value)
        except ValueError:
            return {}
        return obj if isinstance(obj, dict) else {}
    return {}


def _edges(connection: Any) -> list[dict[str, Any]]:
    if not isinstance(connection, dict):
        return []
    return [e for e in connection.get("edges") or [] if isinstance(e, dict)]


def _next_cursor(connection: Any) -> str | None:
    info = connection.get("pageInfo") if isinstance(connection, dict) else None
    if isinstance(info, dict) and info.get("hasNextPage") and info.get("endCursor"):
        return str(info["endCursor"])
    return None


def _alias_of(alias: Any, entity: str, project: str, collection: str) -> bool:
    """Whether an Artifact's alias (``{alias artifactCollection {name project {name entity
    {name}}}}``) is one of the collection ``entity/project/collection``.  An artifact is in its
    source collection and in every collection it is linked into (a registry's, often of the same
    name), so the name alone is not enough; a collection whose project is not shown (null: the
    reader may not see it) is never the one being listed."""
    if not isinstance(alias, dict):
        return False
    coll = alias.get("artifactCollection") or {}
    if _str(coll.get("name")) not in ("", collection):
        return False
    if "project" not in coll:  # not asked for
        return True
    proj = coll.get("project")
    if not isinstance(proj, dict):
        return False
    return (_str((proj.get("entity") or {}).get("name")), _str(proj.get("name"))) == (entity, project)


def _sort_aliases(aliases: set[str]) -> tuple[str, ...]:
    return tuple(sorted(aliases, key=lambda a: (a != "latest", a)))


def _run_info(node: Any) -> RunInfo | None:
    """A Run node (``_RUN_FIELDS``) as a RunInfo; W&B's config keeps each key as
    ``{"value": v, "desc": ...}`` next to its own keys (``_wandb``), which are left out."""
    if not isinstance(node, dict) or not _str(node.get("name")):
        return None
    proj = node.get("project") or {}
    config = {
        k: v["value"] if isinstance(v, dict) and "value" in v else v
        for k, v in _metadata(node.get("config")).items()
        if k not in _RUN_INTERNAL_KEYS
    }
    return RunInfo(
        entity=_str((proj.get("entity") or {}).get("name")),
        project=_str(proj.get("name")),
        id=_str(node.get("name")),
        name=_str(node.get("displayName")) or _str(node.get("name")),
        job_type=_str(node.get("jobType")),
        state=_str(node.get("state")),
        created_at_ns=parse_time_ns(node.get("createdAt")),
        config=config,
    )


# -- the registry ------------------------------------------------------------------------------


class WandbRegistry(Registry):
    """A W&B server as a registry that reads, edits and links, but logs nothing new.  See the
    module docstring."""

    kind = "wandb"
    local = False
    batched_gets = True
    writable = False

    def __init__(
        self,
        base_url: str | None = None,
        cache_dir: str | None = None,
        *,
        policy: GraphQLPolicy = DEFAULT_POLICY,
        connect_policy: GraphQLPolicy = CONNECT_POLICY,
        http_policy: transfer.Policy = transfer.DEFAULT_POLICY,
        sdk_cache_dir: str | None = None,
        page_size: int = 500,
        collections_per_call: int = 100,
        versions_per_collection: int = 50,
        url_batch: int = 100,
        max_loaded: int = 16,
        max_urls: int = 20000,
        url_max_age: float = 45 * 60.0,
        url_refreshes: int = 3,
        check_credentials: bool = True,
    ) -> None:
        """``check_credentials``: ask the server who the API key signs in (one ``viewer``
        call, with the short ``connect_policy``), so that a refused key or an unreachable server
        fails here; False for a process whose parent has just done so (a background mount's
        daemon): the signed-in entity is then asked when it is first needed."""
        url = (base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        split = urllib.parse.urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise RegistryError(f"invalid W&B base URL {redact_uri(url)!r}: expected http(s)://host[:port]")
        if split.username or split.password or split.query:
            raise RegistryError(f"invalid W&B base URL {redact_uri(url)!r}: no credentials or query in it")
        self.base_url = url
        self._endpoint = url + "/graphql"
        self._policy = policy
        # Presigned file URLs are fetched without credentials, whatever ~/.netrc says.
        self._http_policy = dataclasses.replace(http_policy, netrc=False)
        self.page_size = page_size
        self.collections_per_call = collections_per_call
        self.versions_per_collection = versions_per_collection
        self.url_refreshes = url_refreshes
        if sdk_cache_dir is None:
            wandb_cache = os.environ.get("WANDB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "wandb")
            sdk_cache_dir = os.path.join(wandb_cache, "artifacts")
        self._sdk_cache = sdk_cache_dir

        self._lock = threading.Lock()
        # Connections (and TLS sessions) reused across calls and threads (W&B #6856), for
        # GraphQL, manifests and file URLs alike.
        self._pool = transfer.HttpPool()
        # Fields older servers lack: learnt from validation errors, then left out.
        self._has_digest_algorithm = True
        self._has_membership = True
        self._has_file_membership = True
        self._features: dict[str, bool] | None = None  # serverInfo.features, asked once
        self._orgs: list[OrgInfo] | None = None  # the viewer's organizations, asked when needed
        self._manifests = ManifestKeeper(
            cache_dir,
            self._fetch_manifest,
            self._fetch_urls,
            sizer=self._sizer,
            max_loaded=max_loaded,
            url_batch=url_batch,
            max_urls=max_urls,
            url_max_age=url_max_age,
            url_wait=policy.budget + policy.read_timeout,
        )

        key, where = find_api_key(url)
        if not key:
            raise AuthError(f"no W&B API key for {url}: {where}; set WANDB_API_KEY or run `wandb login --host {url}`")
        self.__key = key
        self._auth = requests.auth.HTTPBasicAuth("api", key)
        self._key_from = where
        self._viewer: str | None = None  # the signed-in entity, once asked
        if check_credentials:
            try:
                self._sign_in(connect_policy)
            except BaseException:
                self.close()
                raise

    def _sign_in(self, policy: GraphQLPolicy | None = None) -> str:
        data = self._gql("Viewer", VIEWER_QUERY, {}, policy=policy)
        viewer = data.get("viewer")
        if not isinstance(viewer, dict):
            raise AuthError(
                f"the W&B server at {self.base_url} does not accept the API key from {self._key_from}: "
                "set WANDB_API_KEY or run `wandb login --relogin`"
            )
        self._viewer = _viewer_name(viewer)
        log.debug("W&B server %s: signed in as %s", self.base_url, self._viewer)
        return self._viewer

    @property
    def viewer_entity(self) -> str:
        """The entity the API key signs in (asked of the server once)."""
        return self._viewer if self._viewer is not None else self._sign_in()

    def __repr__(self) -> str:
        return f"WandbRegistry({self.spec!r})"

    @property
    def spec(self) -> str:
        return f"wandb:{self.base_url}"

    def close(self) -> None:
        self._pool.close()
        with contextlib.suppress(AttributeError):  # a constructor that failed made none
            self._manifests.close()

    # -- HTTP -----------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Server text fit for a message: the key cut out (a server may echo a header)."""
        key = self.__key
        return text.replace(key, "***") if key else text

    def _retrying(self, what: str, policy: GraphQLPolicy, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` until it returns, retrying :class:`~artifactfs.transfer.Transient`
        failures within ``policy``'s bounds (:func:`artifactfs.transfer.retrying`)."""
        return transfer.retrying(
            what,
            attempt,
            attempts=policy.attempts,
            backoff=policy.backoff,
            backoff_max=policy.backoff_max,
            retry_after_max=policy.retry_after_max,
            budget=policy.budget,
            deadline=policy.deadline,
        )

    def _gql(
        self,
        op: str,
        query: str,
        variables: dict[str, Any],
        *,
        policy: GraphQLPolicy | None = None,
        change: str | None = None,
    ) -> dict[str, Any]:
        """POST one GraphQL operation; its ``data``.  Retries transient failures; raises
        AuthError (401/403), _MissingField (an older schema), RegistryError otherwise.  Errors
        that mean "no such thing" are returned as data (the caller sees the null and names
        what is missing), except for a mutation (``change`` says what it does): then every
        error is raised as what its message says (see :meth:`_refusal`)."""
        body = {"query": query, "variables": variables, "operationName": op}
        what = f"W&B {op} at {self.base_url}"
        chosen = policy or self._policy
        t0 = time.monotonic()

        def attempt() -> Any:
            try:
                resp = self._pool.post(
                    self._endpoint, json=body, auth=self._auth, timeout=(chosen.connect_timeout, chosen.read_timeout)
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise transfer.Transient(f"cannot reach the server ({type(exc).__name__})") from None
            except requests.RequestException as exc:
                raise RegistryError(f"{what}: {type(exc).__name__}: check WANDB_BASE_URL") from None
            return resp

        try:
            payload = self._retrying(what, chosen, lambda: self._answer(attempt(), what))
        except transfer.GaveUp as exc:
            hint = "check WANDB_BASE_URL and the network" if "cannot reach" in str(exc) else "try again later"
            raise RegistryError(f"{exc}: {hint}") from None
        log.debug("W&B %s %s: %.3fs", op, variables, time.monotonic() - t0)
        return self._data(op, payload, change)

    def _answer(self, resp: requests.Response, what: str) -> Any:
        """The JSON of a GraphQL answer, or the right exception for its status."""
        with resp:
            status = resp.status_code
            if status in (401, 403):
                raise AuthError(
                    f"{what}: HTTP {status}: the server refuses the API key; "
                    "set WANDB_API_KEY or run `wandb login --relogin`"
                )
            if status in (408, 429) or 500 <= status < 600:
                raise transfer.Transient(f"HTTP {status}", transfer.retry_after(resp.headers.get("Retry-After")))
            ctype = resp.headers.get("Content-Type", "")
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            if not isinstance(payload, dict) or not ("data" in payload or "errors" in payload):
                shown = ctype.split(";")[0] or "no content type"
                raise RegistryError(
                    f"{what}: HTTP {status} ({shown}) is not a W&B GraphQL answer: "
                    f"is {self.base_url} a W&B server? check WANDB_BASE_URL"
                )
            if status != 200 and not payload.get("errors"):
                raise RegistryError(f"{what}: HTTP {status}")
            return payload

    def _data(self, op: str, payload: dict[str, Any], change: str | None = None) -> dict[str, Any]:
        errors = payload.get("errors") or []
        messages = [self._scrub(str(e.get("message", e)) if isinstance(e, dict) else str(e)) for e in errors]
        for m in messages:
            match = _MISSING_FIELD.search(m)
            if match:
                raise _MissingField(match.group(1))
        if change is not None and messages:
            raise self._refusal(change, messages)
        data = payload.get("data")
        if messages and not all(_NOT_FOUND.search(m) for m in messages):
            raise RegistryError(f"W&B {op} failed: {'; '.join(m[:300] for m in messages[:3])}")
        if not isinstance(data, dict):
            if messages:  # "not found" with no data at all
                return {}
            raise RegistryError(f"W&B {op}: the answer has no data")
        return data

    @staticmethod
    def _refusal(change: str, messages: list[str]) -> ArtifactFSError:
        """A refused mutation as our error: W&B's errors carry no codes, so the message decides
        (permission, then not found, then conflict, then invalid input; else RegistryError)."""
        text = "; ".join(m[:300] for m in messages[:3])
        msg = f"W&B refused {change}: {text}"
        if any(_PERMISSION.search(m) for m in messages):
            return AuthError(f"{msg} (the API key's user may not change it)")
        if any(_NOT_FOUND.search(m) for m in messages):
            return ArtifactNotFound(msg)
        if any(_CONFLICT.search(m) for m in messages):
            return Conflict(msg)
        if any(_INVALID.search(m) for m in messages):
            return InvalidArgument(msg)
        return RegistryError(msg)

    def _query(self, op: str, build: Callable[[], str], variables: dict[str, Any]) -> dict[str, Any]:
        """``_gql`` with the query rebuilt without fields the server turns out not to have."""
        for _ in range(4):
            try:
                return self._gql(op, build(), variables)
            except _MissingField as exc:
                if not self._drop_field(exc.name):
                    raise RegistryError(f"W&B {op}: the server does not know the field {exc.name!r}") from None
                log.info("W&B server %s has no field %s: asking without it", self.base_url, exc.name)
        raise RegistryError(f"W&B {op}: the server's schema is too old")

    def _drop_field(self, name: str) -> bool:
        if name == "digestAlgorithm" and self._has_digest_algorithm:
            self._has_digest_algorithm = False
        elif name == "artifactCollectionMembership" and self._has_membership:
            self._has_membership = False
        elif name == "artifactMembership" and self._has_file_membership:
            self._has_file_membership = False
        else:
            return False
        return True

    # -- namespace ------------------------------------------------------------------------------

    def entities(self) -> list[str]:
        data = self._gql("Viewer", VIEWER_QUERY, {})
        viewer = data.get("viewer")
        if not isinstance(viewer, dict):
            raise AuthError(f"the W&B server at {self.base_url} no longer accepts the API key")
        if self._viewer is None:  # the same answer as at sign-in, which a daemon may have skipped
            self._viewer = _viewer_name(viewer)
        names = {_str(viewer.get("entity"))}
        for edge in _edges(viewer.get("teams")):
            node = edge.get("node")
            if isinstance(node, dict):
                names.add(_str(node.get("name")))
        names.update(org.entity for org in self._organizations(fresh=True))
        names.discard("")
        return sorted(names)

    # -- organizations and their registries (W&B Registry) -------------------------------------

    def _feature(self, name: str) -> bool:
        """Whether the server advertises ``name`` (``serverInfo { features }``, asked once)."""
        if self._features is None:
            try:
                data = self._gql("ServerFeaturesQuery", FEATURES_QUERY, {})
            except _MissingField:
                data = {}
            info = data.get("serverInfo")
            found = {}
            for f in (info.get("features") if isinstance(info, dict) else None) or []:
                if isinstance(f, dict) and _str(f.get("name")):
                    found[_str(f.get("name"))] = bool(f.get("isEnabled"))
            self._features = found
        return self._features.get(name, False)

    def _org_info(self, entity: str) -> tuple[OrgInfo | None, list[OrgInfo]]:
        """FetchOrgInfoFromEntity: ``entity``'s own organization (a team's or an organization's
        entity) and its user's organizations (a personal entity).  An older server that knows no
        organizations answers neither."""
        try:
            data = self._gql("FetchOrgInfoFromEntity", ORG_INFO_QUERY, {"entity": entity})
        except _MissingField as exc:
            log.debug("W&B server %s has no organizations (%s)", self.base_url, exc.name)
            return None, []
        node = data.get("entity")
        if not isinstance(node, dict):
            raise EntityNotFound(f"entity {entity!r} not found on {self.base_url}")

        def org(value: Any) -> OrgInfo | None:
            if not isinstance(value, dict):
                return None
            name, ent = _str(value.get("name")), _str((value.get("orgEntity") or {}).get("name"))
            return OrgInfo(name, ent) if name and ent else None

        user = node.get("user")
        orgs = [o for o in map(org, (user.get("organizations") if isinstance(user, dict) else None) or []) if o]
        return org(node.get("organization")), orgs

    def _organizations(self, *, fresh: bool = False) -> list[OrgInfo]:
        if self._orgs is None or fresh:
            _, orgs = self._org_info(self.viewer_entity) if self.viewer_entity else (None, [])
            self._orgs = orgs
        return self._orgs

    def organizations(self) -> list[OrgInfo]:
        return list(self._organizations(fresh=True))

    def org_entity(self, org_or_entity: str | None, entity: str) -> str | None:
        """As the SDK's ``resolve_org_entity_name``: a team's organization, else one of the
        organizations of the user whose entity ``entity`` is (the one named, or the only one)."""
        own, orgs = self._org_info(entity)
        if own is not None and (not org_or_entity or org_or_entity in own):
            return own.entity
        if orgs:
            if org_or_entity:
                for o in orgs:
                    if org_or_entity in o:
                        return o.entity
                names = ", ".join(repr(o.name) for o in orgs)
                raise InvalidReference(
                    f"organization {org_or_entity!r} is none of {entity!r}'s ({names}): "
                    "name one of them (its display name or its entity) in the registry path"
                )
            if len(orgs) == 1:
                return orgs[0].entity
            raise InvalidReference(
                f"entity {entity!r} belongs to {len(orgs)} organizations: name one in the registry path "
                "(ORG/wandb-registry-NAME/...) or set WANDB_ORGANIZATION"
            )
        raise InvalidReference(
            f"no organization found for entity {entity!r} on {self.base_url}: "
            "name it in the registry path (ORG/wandb-registry-NAME/...) or set WANDB_ORGANIZATION"
        )

    def _registries(self, org: OrgInfo) -> list[str]:
        """The registries (``wandb-registry-*`` projects) of ``org`` that the viewer may see.  A
        page may come back empty (permissions): the walk goes on while the server says there is more."""
        names: list[str] = []
        cursor: str | None = None
        while True:
            variables = {"organization": org.name, "cursor": cursor, "perPage": self.page_size}
            data = self._gql("FetchRegistries", REGISTRIES_QUERY, variables)
            node = data.get("organization")
            ent = node.get("orgEntity") if isinstance(node, dict) else None
            if not isinstance(ent, dict):
                raise EntityNotFound(f"organization {org.name!r} ({org.entity}) not found on {self.base_url}")
            conn = ent.get("projects")
            names.extend(_str((e.get("node") or {}).get("name")) for e in _edges(conn))
            cursor = _next_cursor(conn)
            if cursor is None:
                return sorted(n for n in names if is_registry_project(n))

    def check_entity(self, entity: str) -> None:
        data = self._gql("CheckEntity", CHECK_ENTITY_QUERY, {"entity": entity})
        if not isinstance(data.get("entity"), dict):
            raise EntityNotFound(f"entity {entity!r} not found on {self.base_url}")

    def check_project(self, entity: str, project: str) -> None:
        data = self._gql("CheckProject", CHECK_PROJECT_QUERY, {"entity": entity, "project": project})
        if not isinstance(data.get("entity"), dict):
            raise EntityNotFound(f"entity {entity!r} not found on {self.base_url}")
        if not isinstance(data.get("project"), dict):
            raise ProjectNotFound(f"project {entity}/{project} not found on {self.base_url}")

    def projects(self, entity: str) -> list[str]:
        """An entity's projects; an organization's entity lists its registries (as the SDK's
        ``Api.registries()`` finds them), where the server offers registry search."""
        org = next((o for o in self._organizations() if o.entity == entity), None)
        if org is not None and self._feature(REGISTRY_SEARCH):
            return self._registries(org)
        names: list[str] = []
        cursor: str | None = None
        while True:
            data = self._gql(
                "EntityProjects", PROJECTS_QUERY, {"entity": entity, "cursor": cursor, "perPage": self.page_size}
            )
            if not isinstance(data.get("entity"), dict):
                raise EntityNotFound(f"entity {entity!r} not found on {self.base_url}")
            conn = data.get("models")
            names.extend(_str((e.get("node") or {}).get("name")) for e in _edges(conn))
            cursor = _next_cursor(conn)
            if cursor is None:
                return sorted(n for n in names if n)

    def _project_data(self, data: dict[str, Any], entity: str, project: str) -> dict[str, Any]:
        proj = data.get("project")
        if not isinstance(proj, dict):
            raise ProjectNotFound(f"project {entity}/{project} not found on {self.base_url}")
        return proj

    def collections(self, entity: str, project: str) -> list[CollectionInfo]:
        out: list[CollectionInfo] = []
        cursor: str | None = None
        while True:
            variables = {"entity": entity, "project": project, "cursor": cursor, "perPage": self.page_size}
            data = self._gql("ProjectArtifactCollections", COLLECTIONS_QUERY, variables)
            conn = self._project_data(data, entity, project).get("artifactCollections")
            for edge in _edges(conn):
                node = edge.get("node")
                if not isinstance(node, dict) or not _str(node.get("name")):
                    continue
                out.append(
                    CollectionInfo(
                        entity=entity,
                        project=project,
                        name=node["name"],
                        type=_str((node.get("defaultArtifactType") or {}).get("name")),
                        description=_str(node.get("description")),
                        created_at_ns=parse_time_ns(node.get("createdAt")),
                        version_count=_int((node.get("artifacts") or {}).get("totalCount")),
                    )
                )
            cursor = _next_cursor(conn)
            if cursor is None:
                return sorted(out, key=lambda c: c.name)

    def _version(
        self,
        entity: str,
        project: str,
        collection: str,
        node: dict[str, Any],
        version: Any = None,
        aliases: list[Any] | None = None,
    ) -> VersionInfo | None:
        """A VersionInfo from an Artifact node; ``version`` ("vN") and ``aliases`` are the
        collection's view when the caller has them (a linked collection numbers its own)."""
        artifact_id = _str(node.get("id"))
        if not artifact_id:
            return None
        index = parse_version(version) if isinstance(version, str) else None
        if index is None:
            index = _int(node.get("versionIndex"))
        names: set[str] = set()
        if aliases is None:
            aliases = [a for a in node.get("aliases") or [] if _alias_of(a, entity, project, collection)]
        for a in aliases:
            alias = _str(a.get("alias")) if isinstance(a, dict) else ""
            if alias and parse_version(alias) is None:
                names.add(alias)
        loaded = self._manifests.loaded_index(artifact_id)
        seq = node.get("artifactSequence") or {}
        seq_proj = seq.get("project") or {}
        logged = (_str((seq_proj.get("entity") or {}).get("name")), _str(seq_proj.get("name")), _str(seq.get("name")))
        source = None
        if logged[2] and logged != (entity, project, collection):
            source = Ref(*logged, f"v{_int(node.get('versionIndex'))}")
        return WandbVersionInfo(
            id=artifact_id,
            entity=entity,
            project=project,
            name=collection,
            type=_str((node.get("artifactType") or {}).get("name")),
            version_index=index,
            aliases=_sort_aliases(names),
            digest=_str(node.get("digest")),
            digest_algorithm=_str(node.get("digestAlgorithm")) or MANIFEST_MD5,
            commit_hash=_str(node.get("commitHash")),
            created_at_ns=parse_time_ns(node.get("createdAt")),
            updated_at_ns=parse_time_ns(node.get("updatedAt") or node.get("createdAt")),
            description=_str(node.get("description")),
            metadata=_metadata(node.get("metadata")),
            size=_int(node.get("size")),
            state=_str(node.get("state")) or "COMMITTED",
            file_count=_int(node.get("fileCount")),
            storage_policy_config=dict(loaded.storage_policy_config) if loaded is not None else {},
            source=source,
        )

    def _versions_from(self, entity: str, project: str, collection: str, conn: Any) -> list[VersionInfo]:
        out = []
        for edge in _edges(conn):
            node = edge.get("node")
            if isinstance(node, dict) and _str(node.get("state")) != DELETED:
                v = self._version(entity, project, collection, node, edge.get("version"))
                if v is not None:
                    out.append(v)
        return out

    def _collection_versions(
        self, entity: str, project: str, name: str, cursor: str | None = None
    ) -> list[VersionInfo]:
        out: list[VersionInfo] = []
        while True:
            variables = {
                "entity": entity,
                "project": project,
                "collection": name,
                "cursor": cursor,
                "perPage": self.page_size,
            }
            data = self._query("CollectionVersions", lambda: _versions_query(self._has_digest_algorithm), variables)
            coll = self._project_data(data, entity, project).get("artifactCollection")
            if not isinstance(coll, dict):
                raise ArtifactNotFound(f"artifact {entity}/{project}/{name} not found on {self.base_url}")
            conn = coll.get("artifacts")
            out.extend(self._versions_from(entity, project, name, conn))
            cursor = _next_cursor(conn)
            if cursor is None:
                return out

    def versions(self, entity: str, project: str, name: str) -> list[VersionInfo]:
        return sorted(self._collection_versions(entity, project, name), key=lambda v: v.version_index)

    def project_versions(self, entity: str, project: str) -> list[VersionInfo]:
        """Nested pages: each call brings ``collections_per_call`` collections with the first
        ``versions_per_collection`` versions of each (an answer of at most their product
        versions); only a collection with more versions than that costs further calls (its own
        pages of ``page_size``).  So ``ceil(collections / collections_per_call)`` calls,
        plus a few per large collection, never one per collection."""
        out: list[VersionInfo] = []
        cursor: str | None = None
        while True:
            variables = {
                "entity": entity,
                "project": project,
                "cursor": cursor,
                "perPage": self.collections_per_call,
                "versionsPerCollection": self.versions_per_collection,
            }
            data = self._query(
                "ProjectVersions", lambda: _project_versions_query(self._has_digest_algorithm), variables
            )
            conn = self._project_data(data, entity, project).get("artifactCollections")
            for edge in _edges(conn):
                node = edge.get("node")
                name = _str(node.get("name")) if isinstance(node, dict) else ""
                if not name:
                    continue
                assert isinstance(node, dict)
                inner = node.get("artifacts")
                out.extend(self._versions_from(entity, project, name, inner))
                more = _next_cursor(inner)
                if more is not None:
                    out.extend(self._collection_versions(entity, project, name, more))
            cursor = _next_cursor(conn)
            if cursor is None:
                return sorted(out, key=lambda v: (v.name, v.version_index))

    def resolve(self, ref: Ref) -> VersionInfo:
        return self._resolve(ref)[0]

    def _resolve(self, ref: Ref) -> tuple[VersionInfo, dict[str, Any], dict[str, Any]]:
        """The version, the collection its membership names (``__typename``, ``id``, ``name``;
        empty on servers without memberships) and the artifact node (its ``artifactSequence``
        says where it was logged: elsewhere than ``ref`` for a link)."""
        if ref.tag is None:
            raise ArtifactNotFound(f"artifact reference {ref} names no version or alias")
        coll: dict[str, Any] = {}
        variables = {"entity": ref.entity, "project": ref.project, "name": f"{ref.name}:{ref.tag}"}
        while True:
            if self._has_membership:
                try:
                    data = self._gql(
                        "ArtifactMembershipByName", _membership_query(self._has_digest_algorithm), variables
                    )
                except _MissingField as exc:
                    if not self._drop_field(exc.name):
                        raise RegistryError(f"W&B resolve: the server does not know the field {exc.name!r}") from None
                    continue
                member = self._project_data(data, ref.entity, ref.project).get("artifactCollectionMembership")
                node = member.get("artifact") if isinstance(member, dict) else None
                if not isinstance(member, dict) or not isinstance(node, dict):
                    raise ArtifactNotFound(f"artifact {ref} not found on {self.base_url}")
                version = member.get("versionIndex")
                named = member.get("artifactCollection")
                coll = named if isinstance(named, dict) else {}
                v = self._version(
                    ref.entity,
                    ref.project,
                    ref.name,
                    node,
                    f"v{version}" if isinstance(version, int) else None,
                    member.get("aliases") if isinstance(member.get("aliases"), list) else None,
                )
            else:
                data = self._query(
                    "ArtifactByName", lambda: _artifact_by_name_query(self._has_digest_algorithm), variables
                )
                node = self._project_data(data, ref.entity, ref.project).get("artifact")
                if not isinstance(node, dict):
                    raise ArtifactNotFound(f"artifact {ref} not found on {self.base_url}")
                v = self._version(ref.entity, ref.project, ref.name, node)
            if v is None or v.state == DELETED:
                raise ArtifactNotFound(f"artifact {ref} not found on {self.base_url}")
            return v, coll, node

    def version_by_id(self, artifact_id: str) -> VersionInfo:
        return self._version_by_id(artifact_id)  # one ArtifactByID query, not the base class's walk

    def _version_by_id(self, artifact_id: str) -> VersionInfo:
        data = self._query(
            "ArtifactByID", lambda: _artifact_by_id_query(self._has_digest_algorithm), {"id": artifact_id}
        )
        node = data.get("artifact")
        if not isinstance(node, dict):
            raise ArtifactNotFound(f"artifact id {artifact_id} not found on {self.base_url}")
        v = self._version_from_node(node)
        if v is None:
            raise ArtifactNotFound(f"artifact id {artifact_id}: the server does not say where it lives")
        return v

    def _version_from_node(self, node: dict[str, Any]) -> VersionInfo | None:
        """An Artifact node as the version of the sequence it was logged to (None if the node
        does not say which)."""
        seq = node.get("artifactSequence") or {}
        proj = seq.get("project") or {}
        entity = _str((proj.get("entity") or {}).get("name"))
        v = self._version(entity, _str(proj.get("name")), _str(seq.get("name")), node)
        return v if v is not None and v.entity and v.project and v.name else None

    # -- edits: W&B's mutations (new versions are logged with the wandb SDK) ---------------------

    def _refuse(self, what: str) -> ReadOnly:
        refusal = super()._refuse(what)
        if what == "logging a new version":
            return ReadOnly(
                f"{refusal} (logging new versions to W&B is not supported; use the wandb SDK, "
                "or log to a local registry)"
            )
        return refusal

    def _mutate(self, op: str, query: str, variables: dict[str, Any], change: str) -> dict[str, Any]:
        """Send one mutation; its ``result``.  Refusals are raised as what they say
        (:meth:`_refusal`).  Transient failures are retried like any call: every mutation used
        here is idempotent, except that a retried delete whose first try did land reports the
        version as not found."""
        try:
            data = self._gql(op, query, variables, change=change)
        except _MissingField as exc:
            raise RegistryError(
                f"W&B refused {change}: the server at {self.base_url} has no {exc.name!r} (too old for this edit)"
            ) from None
        result = data.get("result")
        if not isinstance(result, dict):
            raise RegistryError(f"W&B {op}: the answer to {change} has no result")
        log.info("W&B %s: %s", op, change)
        return result

    @staticmethod
    def _alias_input(v: VersionInfo, alias: str) -> dict[str, Any]:
        """An alias of ``v`` in the collection ``v`` was resolved in (a link's aliases are its
        portfolio's)."""
        target = {"entityName": v.entity, "projectName": v.project, "artifactCollectionName": v.name}
        return {"input": {"artifactID": v.id, "aliases": [{**target, "alias": alias}]}}

    def add_alias(self, ref: Ref, alias: str) -> VersionInfo:
        """Point ``alias`` at ``ref``'s version (W&B moves it from another version)."""
        check_alias(alias)
        if alias == LATEST:
            raise Conflict("alias 'latest' is managed by W&B: it always names the newest version")
        v = self.resolve(ref)
        self._mutate(
            "AddAliases", ADD_ALIASES_MUTATION, self._alias_input(v, alias), f"adding alias {alias!r} to {v.ref}"
        )
        return self.resolve(v.ref)

    def remove_alias(self, ref: Ref, alias: str) -> VersionInfo:
        check_alias(alias)
        if alias == LATEST:
            raise Conflict("alias 'latest' is managed by W&B and cannot be removed")
        v = self.resolve(ref)
        if alias not in v.aliases:
            raise ArtifactNotFound(f"artifact {v.ref} has no alias {alias!r}")
        change = f"removing alias {alias!r} from {v.ref}"
        self._mutate("DeleteAliases", DELETE_ALIASES_MUTATION, self._alias_input(v, alias), change)
        return self.resolve(v.ref)

    def update(
        self, ref: Ref, *, description: str | None = None, metadata: dict[str, Any] | None = None
    ) -> VersionInfo:
        """Change the description and/or metadata of ``ref``'s artifact (W&B keeps them per
        artifact, so a link and its source show the same)."""
        text = None if metadata is None else json_object_text(metadata)
        v = self.resolve(ref)
        if description is None and text is None:
            return v
        inp: dict[str, Any] = {"artifactID": v.id}
        if description is not None:
            inp["description"] = description
        if text is not None:
            inp["metadata"] = text
        self._mutate("UpdateArtifact", UPDATE_ARTIFACT_MUTATION, {"input": inp}, f"editing {v.ref}")
        return self.resolve(v.ref)

    def delete(self, ref: Ref, *, delete_aliases: bool = False) -> VersionInfo:
        """Delete ``ref``'s version (W&B's soft delete), or, when ``ref`` names it through a
        linked collection, remove just that link (as the SDK's ``delete()`` of a link does; the
        source stays).  W&B refuses to delete a version that aliases other than ``latest``
        name, in any collection, unless ``delete_aliases``.  Returns the version as it was."""
        v, coll, node = self._resolve(ref)
        if self._is_link(v, coll, node):
            portfolio = _str(coll.get("id"))
            if not portfolio:
                raise RegistryError(f"cannot unlink {v.ref}: the server does not say which collection it is in")
            unlink = {"input": {"artifactID": v.id, "artifactPortfolioID": portfolio}}
            self._mutate("UnlinkArtifact", UNLINK_ARTIFACT_MUTATION, unlink, f"unlinking {v.ref}")
            return v
        variables: dict[str, Any] = {"input": {"artifactID": v.id, "deleteAliases": delete_aliases}}
        try:
            self._mutate("DeleteArtifact", DELETE_ARTIFACT_MUTATION, variables, f"deleting {v.ref}")
        except Conflict as exc:
            if delete_aliases:
                raise
            raise Conflict(f"{exc} (here: --delete-aliases, or delete_aliases=True)") from exc
        return v

    @staticmethod
    def _is_link(v: VersionInfo, coll: dict[str, Any], node: dict[str, Any]) -> bool:
        kind = _str(coll.get("__typename"))
        if kind:
            return kind == "ArtifactPortfolio"
        seq = node.get("artifactSequence") or {}
        proj = seq.get("project") or {}
        source = (_str((proj.get("entity") or {}).get("name")), _str(proj.get("name")), _str(seq.get("name")))
        return bool(source[2]) and source != (v.entity, v.project, v.name)

    def link(self, ref: Ref, target: str, aliases: Iterable[str] = ()) -> VersionInfo:
        """Link ``ref``'s version into the collection ``target`` (``entity/project/name``; W&B
        makes it, a portfolio, on first use) with ``aliases``; ``latest`` there moves to it.
        Linking a link links its source.  Returns the version as ``target`` numbers it.
        Registries (``wandb-registry-*`` projects of an organization) are not resolved here:
        ``target`` must name the entity that holds the project."""
        to = parse_ref(target)
        if to.tag is not None:
            raise InvalidReference(f"link target {target!r} names a version: expected ENTITY/PROJECT/NAME")
        names = [check_alias(a) for a in aliases if a != LATEST]
        v = self.resolve(ref)
        inp = {
            "artifactID": v.id,
            "artifactPortfolioName": to.name,
            "entityName": to.entity,
            "projectName": to.project,
            "aliases": [{"artifactCollectionName": to.name, "alias": a} for a in names],
        }
        result = self._mutate("LinkArtifact", LINK_ARTIFACT_MUTATION, {"input": inp}, f"linking {v.ref} into {to}")
        index = result.get("versionIndex")
        if not isinstance(index, int):
            raise RegistryError(f"W&B LinkArtifact: the answer names no version of {to}")
        return self.resolve(to.with_tag(f"v{index}"))

    # -- lineage --------------------------------------------------------------------------------

    def logged_by(self, version: VersionInfo) -> RunInfo | None:
        """The run that logged ``version`` (None when a user logged it without a run)."""
        data = self._gql("ArtifactCreatedBy", CREATED_BY_QUERY, {"id": version.id})
        node = data.get("artifact")
        if not isinstance(node, dict):
            raise ArtifactNotFound(f"artifact {version.ref} (id {version.id}) not found on {self.base_url}")
        creator = node.get("createdBy")
        if not isinstance(creator, dict) or creator.get("__typename") != "Run":
            return None
        return _run_info(creator)

    def used_by(self, version: VersionInfo) -> list[RunInfo]:
        data = self._gql("ArtifactUsedBy", USED_BY_QUERY, {"id": version.id})
        node = data.get("artifact")
        if not isinstance(node, dict):
            raise ArtifactNotFound(f"artifact {version.ref} (id {version.id}) not found on {self.base_url}")
        runs = (_run_info(e.get("node")) for e in _edges(node.get("usedBy")))
        return [r for r in runs if r is not None]

    def default_entity(self) -> str | None:
        """The signed-in user's entity (asked once), as W&B defaults to it."""
        return self.viewer_entity or None

    def run(self, entity: str, project: str, run_id: str) -> RunInfo:
        data = self._gql("Run", RUN_QUERY, {"entity": entity, "project": project, "run": run_id})
        run = _run_info(self._project_data(data, entity, project).get("run"))
        if run is None:
            raise RunNotFound(f"run {entity}/{project}/{run_id} not found on {self.base_url}")
        return run

    def runs(self, entity: str, project: str) -> list[RunInfo]:
        """The project's runs, oldest first (every page: a project with many runs costs one call
        per ``page_size`` of them)."""
        out: list[RunInfo] = []
        cursor: str | None = None
        while True:
            variables = {
                "entity": entity,
                "project": project,
                "cursor": cursor,
                "perPage": self.page_size,
                "order": "+created_at",
            }
            data = self._gql("ProjectRuns", RUNS_QUERY, variables)
            conn = self._project_data(data, entity, project).get("runs")
            out.extend(r for r in (_run_info(e.get("node")) for e in _edges(conn)) if r is not None)
            cursor = _next_cursor(conn)
            if cursor is None:
                return sorted(out, key=lambda r: r.created_at_ns)

    def run_outputs(self, run: RunInfo) -> list[VersionInfo]:
        """The live versions ``run`` logged, oldest first."""
        return sorted(self._run_artifacts(run, "RunOutputArtifacts", "outputArtifacts"), key=lambda v: v.created_at_ns)

    def run_inputs(self, run: RunInfo) -> list[VersionInfo]:
        """The live versions ``run`` used, in the server's order (W&B does not say when a run used one)."""
        return self._run_artifacts(run, "RunInputArtifacts", "inputArtifacts")

    def _run_artifacts(self, run: RunInfo, op: str, field: str) -> list[VersionInfo]:
        out: list[VersionInfo] = []
        cursor: str | None = None
        while True:
            variables = {
                "entity": run.entity,
                "project": run.project,
                "run": run.id,
                "cursor": cursor,
                "perPage": self.page_size,
            }
            data = self._query(op, lambda: _run_artifacts_query(op, field, self._has_digest_algorithm), variables)
            node = self._project_data(data, run.entity, run.project).get("run")
            if not isinstance(node, dict):
                raise RunNotFound(f"run {run.path} not found on {self.base_url}")
            conn = node.get("artifacts")
            for edge in _edges(conn):
                art = edge.get("node")
                if isinstance(art, dict) and _str(art.get("state")) != DELETED:
                    v = self._version_from_node(art)
                    if v is not None:
                        out.append(v)
            cursor = _next_cursor(conn)
            if cursor is None:
                return out

    # -- manifests (kept on disk and indexed by remote.ManifestKeeper) ----------------------------

    def contents_loaded(self, version: VersionInfo) -> bool:
        return self._manifests.loaded(version)

    def load_contents(self, version: VersionInfo) -> None:
        """Open ``version``'s manifest index: checked from ``cache_dir/manifests``, or built
        (streaming) from the manifest kept there, or from a fresh fetch."""
        self._manifests.load(version)

    def _sizer(self, version: VersionInfo, depth: int) -> Callable[[str, str, str], int | None] | None:
        """W&B writes ``wandb-artifact://<hex id>/<path>`` entries with size 0 and the target
        entry's digest.  The mount needs their real size (``stat``, and the store checks it), so
        each target artifact is looked up once (its manifest is kept and indexed like any other)
        and the entry with that path and digest gives the size.  A target that cannot be had
        leaves the entry as it is (reading it then fails, with a message)."""
        if depth >= 2:
            return None
        targets: dict[str, ManifestIndex | None] = {}

        def size(path: str, ref: str, digest: str) -> int | None:
            if not ref.startswith("wandb-artifact://"):
                return None
            split = urllib.parse.urlsplit(ref)
            hex_id, target_path = split.netloc, urllib.parse.unquote(split.path.lstrip("/"))
            if hex_id not in targets:
                targets[hex_id] = None
                try:
                    target = self._version_by_id(base64.b64encode(bytes.fromhex(hex_id)).decode("ascii"))
                    loaded = self._manifests.loaded_index(target.id)
                    targets[hex_id] = loaded or self._manifests.open_or_build(target, depth + 1)
                except (ValueError, ArtifactFSError) as exc:
                    log.warning("%s/%s: reference %s cannot be sized: %s", version.ref, path, ref, exc)
            found = targets[hex_id]
            child = found.get(target_path) if found is not None else None
            if child is not None and child.entry is not None and child.entry.digest == digest:
                return child.entry.size
            return None

        return size

    def _fetch_manifest(self, version: VersionInfo, fd: int) -> None:
        """Write ``version``'s manifest into ``fd`` (an empty file opened for writing)."""
        what = f"manifest of {version.ref}"
        for n in range(2):  # a presigned URL that expired before we used it: ask once more
            data = self._gql("FetchArtifactManifest", MANIFEST_QUERY, {"id": version.id})
            node = data.get("artifact")
            if not isinstance(node, dict):
                raise ArtifactNotFound(f"artifact {version.ref} (id {version.id}) not found on {self.base_url}")
            url = _str(((node.get("currentManifest") or {}).get("file") or {}).get("directUrl"))
            if not url:
                raise ManifestError(f"{what}: the server has no manifest for it (state {version.state})")
            try:
                self._get_into(url, what, fd)
                return
            except AuthError:
                if n:
                    raise
                log.info("%s: manifest URL refused (expired?); asking for a fresh one", what)
        raise AssertionError("unreachable")

    def _get_into(self, url: str, what: str, fd: int) -> None:
        """A plain GET of a presigned URL (no credentials) into ``fd``, streamed (a manifest of a
        million entries is ~100 MB: never held in memory), with the GraphQL retry rules; each
        try starts the file again."""
        shown = redact_uri(url)
        label = f"GET {shown} ({what})"

        def attempt() -> None:
            os.ftruncate(fd, 0)
            try:
                resp = self._pool.get(url, timeout=(self._policy.connect_timeout, self._policy.read_timeout))
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise transfer.Transient(type(exc).__name__) from None
            except requests.RequestException as exc:
                raise FetchError(f"{label}: {type(exc).__name__}") from None
            with resp:
                status = resp.status_code
                if status in (401, 403):
                    raise AuthError(f"{label}: HTTP {status} (the URL has expired?)")
                if status in (408, 429) or 500 <= status < 600:
                    raise transfer.Transient(f"HTTP {status}", transfer.retry_after(resp.headers.get("Retry-After")))
                if status != 200:
                    raise FetchError(f"{label}: HTTP {status}")
                size = 0
                try:
                    for chunk in resp.iter_content(1 << 20):
                        if size + len(chunk) > MAX_MANIFEST_BYTES:
                            raise FetchError(f"{label}: larger than {MAX_MANIFEST_BYTES} bytes")
                        view = memoryview(chunk)
                        while view:
                            n = os.pwrite(fd, view, size)
                            size += n
                            view = view[n:]
                except requests.RequestException as exc:
                    raise transfer.Transient(f"body failed ({type(exc).__name__})") from None
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != size:
                    raise transfer.Transient(f"body cut at {size} of {length} bytes")

        try:
            self._retrying(label, self._policy, attempt)
        except transfer.GaveUp as exc:
            raise FetchError(str(exc)) from None

    def manifest(self, version: VersionInfo) -> Manifest:
        return self._manifests.manifest(version)

    def write_manifest(self, version: VersionInfo, out: IO[bytes]) -> int:
        return self._manifests.write_manifest(version, out)

    def iter_entries(self, version: VersionInfo) -> Iterator[Entry]:
        return self._manifests.iter_entries(version)

    def list_dir(self, version: VersionInfo, path: str) -> list[DirEntry]:
        return self._manifests.list_dir(version, path)

    def get_entry(self, version: VersionInfo, path: str) -> DirEntry:
        return self._manifests.get_entry(version, path)

    def list_dir_now(self, version: VersionInfo, path: str) -> list[DirEntry] | None:
        return self._manifests.list_dir_now(version, path)

    def contents_index(self, version: VersionInfo) -> ManifestIndex | None:
        return self._manifests.loaded_index(version.id)

    def get_entry_now(self, version: VersionInfo, path: str) -> DirEntry | None:
        return self._manifests.get_entry_now(version, path)

    # -- blobs ----------------------------------------------------------------------------------

    def blob_source(self, version: VersionInfo, entry: Entry) -> BlobSource:
        return self._blob_source(version, entry, depth=0)

    def prepare_sources(self, version: VersionInfo, entries: list[Entry]) -> None:
        """The download URLs of ``entries`` asked ahead, ``URL_PAGE`` names a request
        (``files(names:)``), for the fetch engine: its workers then find them ready instead of
        each directory's first fetch asking for the next ``url_batch`` while the others wait."""
        self._manifests.prepare(version, entries, URL_PAGE)

    def get_small(
        self, version: VersionInfo, entries: list[Entry], concurrency: int, idle: Callable[[], None] | None = None
    ) -> Iterator[tuple[Entry, bytes | None]]:
        """Presigned file URLs (asked in pages, as for :meth:`blob_source`) fetched by
        :func:`transfer.get_many`; references, files in the wandb SDK's cache and any URL that
        cannot be had are left to :meth:`blob_source`."""
        plain: list[Entry] = []
        urls: list[tuple[str, int]] = []
        for entry in entries:
            url = None
            if entry.ref is None and entry.size <= transfer.MANY_MAX_SIZE and self._sdk_cache_path(entry) is None:
                try:
                    url = self._manifests.url(version, entry, fresh=False)
                except ArtifactFSError:
                    url = None  # its ordinary fetch reports it
            if url is None:
                yield entry, None
            else:
                plain.append(entry)
                urls.append((url, entry.size))
        for got in transfer.get_many(
            urls, pool=self._pool, policy=self._http_policy, concurrency=concurrency, idle=idle
        ):
            if got.status in (401, 403):  # refused (expired?): the ordinary path asks a fresh one
                self._manifests.forget_url(version, plain[got.index].path, urls[got.index][0])
            if got.body is None:
                log.debug(
                    "%s/%s: batched GET: %s; fetched the ordinary way", version.ref, plain[got.index].path, got.problem
                )
            yield plain[got.index], got.body

    def _blob_source(self, version: VersionInfo, entry: Entry, depth: int) -> BlobSource:
        if entry.ref is not None:
            return self._reference_source(version, entry, depth)
        description = f"{version.ref}/{entry.path}"

        def download(fd: int, what: str, progress: Progress) -> None:
            self._download(version, entry, fd, what, progress)

        source = BlobSource(description, download=download)
        if entry.size <= transfer.MANY_MAX_SIZE:
            # A small file: one plain GET through libcurl first (a tenth of the CPU of the
            # ordinary path), the engine's batched GET for a batch of one; any failure, or
            # wrong bytes, and the ordinary path (retries, fresh URLs, redirects) fetches it.
            def get_one() -> IO[bytes]:
                ((_, body),) = self.get_small(version, [entry], 1)
                if body is None:
                    raise FetchError(f"{description}: the plain GET did not bring it")
                return io.BytesIO(body)

            source = BlobSource(f"{description} (one GET)", open=get_one, fallback=source, optimistic=True)
        cached = self._sdk_cache_path(entry)
        if cached is not None:
            return BlobSource(f"{description} (wandb SDK cache)", open=_opener(cached), fallback=source)
        return source

    def _sdk_cache_path(self, entry: Entry) -> str | None:
        """The wandb SDK's cached copy of ``entry``, if there is one.  Read only, never
        trusted: the store hashes it like any download and falls back on a mismatch."""
        try:
            hexd = hex_from_b64(entry.digest)
        except ManifestError:
            return None
        path = os.path.join(self._sdk_cache, "obj", entry.alg.lower(), hexd[:2], hexd[2:])
        return path if os.path.isfile(path) else None

    def _reference_source(self, version: VersionInfo, entry: Entry, depth: int) -> BlobSource:
        assert entry.ref is not None
        scheme = urllib.parse.urlsplit(entry.ref).scheme
        if scheme == "wandb-artifact":
            return self._artifact_reference(version, entry, depth)
        from ..references import reference_source

        # allow_file=False: a remote registry's entries never read this machine's disk.  A
        # reference URL is an ordinary one (not presigned): ~/.netrc applies as in the SDK.
        return reference_source(entry, allow_file=False, policy=dataclasses.replace(self._http_policy, netrc=True))

    def _artifact_reference(self, version: VersionInfo, entry: Entry, depth: int) -> BlobSource:
        """``wandb-artifact://<hex id>/<path>``: the entry of another artifact, fetched as that
        artifact's own file (its digest is the target entry's, so the store verifies it)."""
        assert entry.ref is not None
        what = f"{version.ref}/{entry.path}"
        if depth >= 4:
            raise FetchError(f"{what}: wandb-artifact references nest too deeply")
        split = urllib.parse.urlsplit(entry.ref)
        target_path = urllib.parse.unquote(split.path.lstrip("/"))
        try:
            artifact_id = base64.b64encode(bytes.fromhex(split.netloc)).decode("ascii")
            check_entry_path(target_path)
        except (ValueError, ArtifactFSError):
            raise FetchError(f"{what}: malformed reference {redact_uri(entry.ref)}") from None
        try:
            target = self._version_by_id(artifact_id)
            found = self.get_entry(target, target_path).entry
        except ArtifactFSError as exc:
            raise FetchError(f"{what}: its target {redact_uri(entry.ref)} cannot be found ({exc})") from exc
        if found is None:
            raise FetchError(f"{what}: its target {target.ref}/{target_path} is a directory")
        return self._blob_source(target, found, depth + 1)

    def _download(self, version: VersionInfo, entry: Entry, fd: int, what: str, progress: Progress) -> None:
        """Download with :func:`artifactfs.http.download`; a refused URL (expired) is replaced
        by a fresh one for this file only, a bounded number of times."""
        last: AuthError | None = None
        for n in range(self.url_refreshes + 1):
            url = self._manifests.url(version, entry, fresh=n > 0)
            try:
                http.download(url, fd, entry.size, what, progress, policy=self._http_policy, pool=self._pool)
                return
            except AuthError as exc:
                last = exc
                self._manifests.forget_url(version, entry.path, url)
                os.ftruncate(fd, 0)
                progress.restart()
                log.info("%s: file URL refused (expired?); asking for a fresh one", what)
        raise AuthError(f"{what}: the server refused {self.url_refreshes + 1} URLs for it ({last})")

    def _fetch_urls(self, version: VersionInfo, names: list[str]) -> dict[str, str]:
        variables: dict[str, Any] = {"names": names, "perPage": len(names)}
        while True:
            if self._has_file_membership:
                variables.update(
                    entity=version.entity, project=version.project, collection=version.name, alias=version.version
                )
                try:
                    data = self._gql("GetArtifactMembershipFileUrls", FILE_URLS_QUERY, variables)
                except _MissingField as exc:
                    if not self._drop_field(exc.name):
                        raise FetchError(f"W&B file URLs: the server does not know the field {exc.name!r}") from None
                    continue
                proj = data.get("project")
                coll = proj.get("artifactCollection") if isinstance(proj, dict) else None
                member = coll.get("artifactMembership") if isinstance(coll, dict) else None
                if not isinstance(member, dict):
                    raise FetchError(f"{version.ref}: no longer on {self.base_url} (deleted?)")
                files = member.get("files")
            else:
                data = self._gql(
                    "ArtifactFileUrls", FILE_URLS_BY_ID_QUERY, {"id": version.id, "names": names, "perPage": len(names)}
                )
                node = data.get("artifact")
                if not isinstance(node, dict):
                    raise FetchError(f"{version.ref}: no longer on {self.base_url} (deleted?)")
                files = node.get("files")
            urls: dict[str, str] = {}
            for edge in _edges(files):
                node = edge.get("node") or {}
                name, url = _str(node.get("name")), _str(node.get("directUrl"))
                if name and url:
                    urls[name] = url
            log.debug("%s: %d file URLs for %d names", version.ref, len(urls), len(names))
            return urls


def _opener(path: str) -> Callable[[], IO[bytes]]:
    def open_() -> IO[bytes]:
        try:
            return open(path, "rb")
        except OSError as exc:
            raise FetchError(f"cannot read the wandb SDK cache file {path}: {exc.strerror or exc}") from exc

    return open_


# -- the backend (registry/__init__.py's table) ---------------------------------------------------


def open_spec(rest: str | None, *, create: bool, cache_dir: str | None, checked: bool = False) -> WandbRegistry:
    """The W&B server at ``rest`` (``https://host[:port]``), else ``$WANDB_BASE_URL``'s, else the
    W&B cloud; ``create`` changes nothing (nothing new is logged to W&B).  ``checked``: the
    credentials were checked a moment ago (the server is not asked again now)."""
    return WandbRegistry(base_url=rest, cache_dir=cache_dir, check_credentials=not checked)


def check_spec(rest: str | None) -> None:
    """No credentials, query or fragment in the spec: it may be shown in argv and logs."""
    url = urllib.parse.urlsplit(rest or "")
    if url.username is not None or url.password is not None or url.query or url.fragment:
        raise InvalidArgument(
            f"registry spec wandb:{redact_uri(rest or '')} must not carry credentials or a query "
            "string: put the W&B API key in $WANDB_API_KEY or ~/.netrc"
        )


def create_for_log(rest: str | None) -> None:
    """Nothing: a W&B server's entities and projects are not created here."""


def doctor_checks(rest: str | None, cache_dir: str) -> list[Check]:
    """Credentials for the server, then the server itself (one ``viewer`` call)."""
    url = (rest or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    try:
        key, where = find_api_key(url)
    except ArtifactFSError as exc:
        return [Check("W&B credentials", FAIL, str(exc), "fix ~/.netrc or set WANDB_API_KEY")]
    if not key:
        return [
            Check(
                "W&B credentials",
                FAIL,
                f"no API key for {url}: {where}",
                f"set WANDB_API_KEY or run `wandb login --host {url}` (never put the key on a command line)",
            )
        ]
    checks = [Check("W&B credentials", OK, f"an API key from {where}")]
    try:
        registry = WandbRegistry(base_url=url)
    except AuthError as exc:
        checks.append(
            Check("W&B server", FAIL, str(exc), "check the key (wandb login --relogin) and that it is for this host")
        )
        return checks
    except ArtifactFSError as exc:
        checks.append(
            Check(
                "W&B server",
                FAIL,
                f"{url} is unreachable or not a W&B server: {exc}",
                "check the network, a proxy ($HTTPS_PROXY) and $WANDB_BASE_URL",
            )
        )
        return checks
    try:
        checks.append(Check("W&B server", OK, f"{url}: signed in as {registry.viewer_entity}"))
    finally:
        registry.close()
    return checks


__all__ = [
    "DEFAULT_BASE_URL",
    "GraphQLPolicy",
    "WandbRegistry",
    "WandbVersionInfo",
    "check_spec",
    "create_for_log",
    "doctor_checks",
    "find_api_key",
    "open_spec",
    "parse_manifest",
]
