"""A W&B-compatible test server: real HTTP on 127.0.0.1, GraphQL executed by graphql-core.

Why: the ``wandb`` backend and the real wandb SDK must both be tested against something that
speaks W&B's wire protocol, not a mock of our own client.  Incoming GraphQL documents are parsed,
validated and executed against the schema below (``SCHEMA_SDL``, resolvers are plain view
classes over the stored records), so any query shape whose fields exist is answered, whoever
wrote it (the SDK's Go sidecar or our backend).  A query asking for a field the schema lacks gets
HTTP 400 (``validation_status``) with graphql-js style messages (``Cannot query field "x" on type
"Y".``, which clients match on), also kept in ``WandbServer.graphql_errors``: that is how the
schema was grown, by running the SDK and reading the errors.  tests/test_wandb_server.py proves
the real SDK 0.31.0 works against it.

API (a contract other tests rely on)::

    with WandbServer(api_key="k" * 40, viewer_entity="acme", teams=(), url_ttl=3600.0,
                     features=None, omit_fields=()) as server:
        server.url            # "http://127.0.0.1:PORT" (WANDB_BASE_URL); also start()/stop()
        server.api_key
        rec = server.add_artifact(entity, project, name, type, files, *, aliases=(), metadata=None,
                                  description="", digest_algorithm="MD5" | "XXH128",
                                  references=None, manifest=None, run=None, used_by=())
        server.set_alias(entity, project, name, alias, version_index)
        server.delete_version(entity, project, name, version_index)   # soft delete (links too)
        server.artifact(entity, project, name, version_index) -> ArtifactRecord
        server.link(rec, entity, project, portfolio, aliases=()) -> (collection, index)
        server.memberships(rec) -> [(collection, index)]   # its sequence, then portfolios
        server.collection(entity, project, name) -> its .kind ("SEQUENCE"/"PORTFOLIO"),
                              .aliases (alias -> index), .versions (index -> ArtifactRecord)
        server.add_team(name)
        server.add_organization(name, entity, *, teams=(), member=True)  # "Acme Corp", "acme-org"
        server.add_registry(org_entity, name) -> "wandb-registry-<name>"  # a project of the org entity
        server.hide_project(entity, project, hidden=True)  # the viewer may not see it (see below)
        server.visible(entity, project) -> bool
        server.add_run(entity, project, run_id, *, display_name=None, job_type=None,
                       state="finished", config=None)
        server.set_read_only(entity, project, read_only=True)  # its mutations: "permission denied"
        server.can_write(entity, project) -> bool
        server.features       # dict name -> enabled, answered by serverInfo { features }
        server.schema         # the executable schema (build_schema(omit_fields)); may be replaced
        server.validation_status  # HTTP status for invalid documents (400)
        server.faults         # Faults: see its docstring
        server.requests       # list[Request]: every request, in arrival order
        server.operations(name) -> list[Request]; server.graphql_requests() -> list[Request]
        server.file_requests() -> list[Request]   # GET/HEAD of blobs and manifests (any layout)
        server.reset_log()    # clears requests and graphql_errors
        server.graphql_errors # list[str]: every GraphQL error sent ("<operation>: <message>")
        server.handler_errors # list[str]: tracebacks of request handlers that crashed (bugs)
        server.sign(path, ttl=None) -> str        # "<path>?expires=..&sig=.." for a /files/ path

``Faults`` (``server.faults``; each call adds a rule; ``times=None`` = until ``clear()``;
``match`` = substring of the unquoted path, or of the operation name for GraphQL)::

    faults.status(code, times=1, match=None, retry_after=None)   # blob GET answers code
    faults.expire(times=1, match=None)                           # blob GET answers 403 (expired)
    faults.slow_first_byte(seconds, times=1, match=None)         # sleep before the status line
    faults.slow_body(bytes_per_second, times=1, match=None)      # trickle the body
    faults.reset_after(n_bytes, times=1, match=None)             # RST after n body bytes
    faults.truncate_after(n_bytes, times=1, match=None)          # full Content-Length, n bytes, close
    faults.corrupt(times=1, match=None)                          # flip the middle byte, same length
    faults.graphql_status(code, times=1, retry_after=None, match=None)  # /graphql answers code
    faults.wrong_key = True      # /graphql answers 401 (as for a wrong key)
    faults.null_viewer = True    # viewer resolves null (the SDK: "invalid credentials")
    faults.clear(); faults.pending() -> int
A rule is used up only by a request it changed (details in the ``Faults`` docstring).

``features=None`` enables every feature in ``DEFAULT_FEATURES`` (ARTIFACT_DIGEST_ALGORITHM
included).  ``omit_fields=["Type.field", ...]`` plays an older server: those fields are not in
the schema (dropping an interface field drops it from ArtifactSequence too).

``Request``: method, path (with query string), operation (``operationName`` or the name in the
query text; None for GETs), variables, query, status (sent; 0 before headers), range (the Range
header), authorized (Basic auth matched), time (monotonic), and ``fields``: every selected
field (any depth) -> its arguments as GraphQL source, e.g. ``{"files": {"names": "$names"}}``.

``ArtifactRecord``: id (W&B-style base64 of ``Artifact:<n>``), entity, project, name, type,
version_index, version ("vN"), digest (hex artifact digest of the served manifest's entries),
digest_algorithm ("MD5"/"XXH128"), manifest (dict, as served), manifest_bytes, files (path ->
bytes), file_digests (path -> base64 entry digest), metadata (dict), description, created_at,
run (name of the run that logged it), used_by (run names), deleted, membership_id,
collection_id, size, aliases (the aliases now pointing at it in its own collection, "latest"
included), tags, ttl_duration_seconds, updated_at (0 until a mutation touched it).
Manifests: version 1, storageLayout V2, entries with digest, size, birthArtifactID (the version
that first had that path with that digest) and ``extra: {"alg": "XXH128"}`` for XXH128.

GraphQL:
  Query: viewer serverInfo entity(name) project(name entityName) artifact(id)
    artifactCollection(id) organization(name) [by display name, if the viewer is a member]
    models(entityName first after order) [an entity's projects, as Api.projects() asks]
  User: id name username email admin flags entity deletedAt apiKeys teams(first after) organizations
  ServerInfo: features cliVersionInfo latestLocalVersionInfo availableBucketProviders
  ServerFeature: name isEnabled;  VersionInfo;  ApiKey
  Organization: id name orgEntity advancedRegistryFeatures{advancedSearch [false]}
  Entity: id name isTeam entityType ("user"/"team"/"organization") projects(first after filters
    order) project(name) organization [an org entity's, or a team's org] user
    artifactCollections(projectFilters filters collectionTypes after first order) and
    artifactMemberships(projectFilters collectionFilters filters after first order) [the SDK's
    RegistryCollections / RegistryVersions over the entity's projects]
  Project: id internalId [base64 "ProjectInternalId:n"] name entityName entity description createdAt updatedAt access
    allowAllArtifactTypesInRegistry isBenchmark user artifactTypes(first after includeAll) artifactType(name)
    artifactCollections(first after filters order collectionTypes) artifactCollection(name)
    artifactCollectionMembership(name: "coll:alias") artifact(name: "coll:alias") run(name)
    runs(first after filters order)
  ArtifactType: id name description createdAt project
    artifactCollections(first after filters order collectionTypes) artifactCollection(name)
    artifactSequences(first after filters order) artifactSequence(name)
  interface ArtifactCollection (implemented by ArtifactSequence, which adds latestArtifact,
    and ArtifactPortfolio):
    id name description state createdAt updatedAt project defaultArtifactType tags
    aliases(first after) artifacts(first after order filters) [edges carry version]
    artifactMemberships(first after order filters) artifactMembership(aliasName)
  ArtifactCollectionMembership: id versionIndex createdAt aliases artifactCollection artifact
    files(names first after)
  ArtifactAlias: id alias artifactCollection artifact
  Artifact: id artifactSequence versionIndex artifactType description metadata [JSON string]
    ttlDurationSeconds ttlIsInherited tags historyStep state size digest digestAlgorithm
    commitHash fileCount createdAt updatedAt aliases currentManifest files(names first after)
    createdBy [union ArtifactCreator = Run | User] usedBy(first after) artifactMemberships(first after)
  ArtifactManifest: id type createdAt file;  File: id name displayName url directUrl sizeBytes
    storagePath mimetype updatedAt digest md5
  Run [name = the run id; config as W&B stores it: {"key": {"value": v, "desc": null}}]:
    id name displayName projectId project state tags config summaryMetrics systemMetrics
    group jobType commit readOnly createdAt heartbeatAt description notes sweepName
    historyLineCount historyKeys user{name username} inputArtifacts outputArtifacts
  Tag: id name tagCategoryName attributes;  PageInfo: startCursor endCursor hasNextPage hasPreviousPage
  ArtifactPortfolio implements ArtifactCollection (a collection of links, "linked collection").
  Project.readOnly (what the SDK's IsProjectReadOnly asks).
  Mutation, as the SDK 0.31 sends them (``result: <field>(input: $input) {...}``):
    addAliases(input: {artifactID, aliases: [{entityName projectName artifactCollectionName
      alias}]}) {success}        -- Artifact.save() with aliases appended; moves an alias
    deleteAliases(same input) {success}   -- save() with aliases removed; one the artifact does
      not have is an error
    updateArtifact(input: {artifactID, description, metadata: JSON text of an object, aliases:
      [{artifactCollectionName alias}] (replaces them, the older SDKs' way), tagsToAdd,
      tagsToDelete: [{tagName}], ttlDurationSeconds, labels [ignored]}) {artifact}
      -- save(); null or absent fields stay as they are
    deleteArtifact(input: {artifactID, deleteAliases}) {artifact {id}}  -- delete(); refused
      while aliases other than latest name it (any collection) unless deleteAliases; soft
    linkArtifact(input: {artifactID, artifactPortfolioName, entityName, projectName, aliases:
      [{artifactCollectionName alias}]} or {artifactID, artifactPortfolioID, ...})
      {versionIndex artifactMembership {...}}  -- link("entity/project/name"); the portfolio
      is made on first use with the artifact's type (its project must exist); linking twice
      keeps the index; latest moves
    unlinkArtifact(input: {artifactID, artifactPortfolioID}) {success}  -- delete() of a link
  Every mutation needs the key (401 without), checks everything before changing anything, and
  fails as a GraphQL error (HTTP 200, ``data: {field: null}``, ``path: [field]``) with these
  messages: "permission denied" (an entity that is neither the viewer's nor a team's, or a
  project made read-only), "artifact <id> not found", "artifact collection e/p/n not found",
  "... not found in collection ...", "alias 'x' not found on artifact ...", "alias 'latest' is
  reserved ...", "invalid alias ...", "invalid metadata ...", "cannot delete artifact ... while
  it has aliases ...", "artifact collection 'x' already exists as a sequence ...", "artifact type
  'a' does not match the type 'b' of collection ...".  Real W&B's texts may differ; these are
  this server's.  Not supported: createArtifact/commitArtifact (logging new versions),
  clientID-only links, creating or editing registries.
Organizations and registries (what the SDK's FetchOrgInfoFromEntity, FetchOrganization,
FetchRegistries, FetchRegistry, RegistryCollections, RegistryVersions and linkArtifact into a
registry need; ARTIFACT_REGISTRY_SEARCH is advertised): the viewer belongs to each organization
added with ``member=True``, whose entity is then its to write (links into registries) and is
listed in ``User.organizations``; ``Entity.organization`` is set for the org entity and its
teams, null for the personal entity.  ``filters``/``projectFilters``/``collectionFilters`` of
those queries are MongoDB-style JSON: ``name``/``id`` of projects, ``name`` of collections,
``alias``/``version`` of members, with ``$and $or $eq $in $regex``; anything else is ignored.
A hidden project (``hide_project``) is not found or listed; its artifacts still resolve by id
and through a link (a registry member), with ``artifactSequence.project`` null (as W&B shows a
source the reader may not see) and no ``createdBy``/``usedBy``.
  ``artifactCollections(collectionTypes:)``: absent = sequences and portfolios;
  ``artifactSequences`` only sequences.  A portfolio numbers its members itself (``versionIndex``
  of its memberships, ``version`` of its edges); ``Artifact.aliases`` lists aliases of every
  collection the artifact is in, each with its ``artifactCollection``.
  Connections (edges{cursor node} pageInfo totalCount): ApiKey, Entity, Project, ArtifactType,
    ArtifactCollection, ArtifactAlias, ArtifactCollectionMembership, VersionedArtifact
    (edges also carry version "vN"), File, Run, Tag.
  Scalars: JSONString (JSON text), DateTime ("2026-01-01T00:00:05"), Int64 (sizes >= 2**31).
Names resolve as W&B does: "coll:alias", "coll:vN", "coll:<artifact digest>", "coll" (= latest).
Errors carry ``path`` as a JSON array (graphql-core's formatting).  ``filters`` arguments are
accepted and ignored (everything stored is COMMITTED).

Pagination: cursors are opaque (base64 of an offset); ``first`` absent means "all the rest",
no server-side cap; ``pageInfo.endCursor`` is the last edge's cursor.  Orders: projects,
types and collections by creation (``order: "-..."`` reverses, ``"name"`` sorts), files by
name (``names:`` keeps the asked order, unknown names left out), versions newest first
(``order: "versionIndex"``/``"createdAt"`` oldest first), aliases by name.

HTTP endpoints:
- ``POST /graphql``: Basic auth ``api:<api_key>``; a wrong or missing key gets 401
  (``{"errors": [{"message": "user is not logged in"}]}``); the SDK reports AuthenticationError.
- ``GET|HEAD /files/<hex>/<quoted path>?expires=<unix>&sig=<hmac>``: presigned blob and manifest
  (``wandb_manifest.json``) URLs, no auth; ``Range`` (``a-b``, ``a-``, ``-n``: 206 with
  ``Content-Range``; 416 beyond the end), ``If-Range``, ``ETag`` (quoted MD5 hex),
  ``Accept-Ranges``, ``Content-Length``.  After ``url_ttl`` seconds, or with a bad signature:
  403 with an S3-like XML body (``AccessDenied``, "Request has expired").
- ``GET /artifactsV2/<region>/<entity>/<project>/<coll>/[<artifact id>/]<birth id>/<hex>/<name>``
  and ``GET /artifacts/<entity>/<hex>``: the SDK's authenticated fallbacks (Basic auth, 401
  without), same serving rules; 404 for an unknown entity or digest.
- Anything else: 404.
HTTP/1.0: every response closes its connection, so no handler thread outlives a test.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar

import graphql
from graphql import GraphQLError, GraphQLResolveInfo

from artifactfs.manifest import MANIFEST_ALGORITHM, MD5, XXH128, artifact_digest, digest_bytes, hex_from_b64

log = logging.getLogger(__name__)

Info: TypeAlias = "GraphQLResolveInfo[WandbServer]"

SCHEMA_SDL = """
scalar JSONString
scalar DateTime
scalar Int64

type Query {
  viewer: User
  serverInfo: ServerInfo
  entity(name: String): Entity
  project(name: String, entityName: String): Project
  artifact(id: ID!): Artifact
  artifactCollection(id: ID!): ArtifactCollection
  organization(name: String): Organization
  models(entityName: String, first: Int, after: String, order: String): ProjectConnection
}

type PageInfo { startCursor: String endCursor: String hasNextPage: Boolean! hasPreviousPage: Boolean! }

type ApiKey { id: ID! name: String! description: String }
type ApiKeyEdge { cursor: String! node: ApiKey }
type ApiKeyConnection { edges: [ApiKeyEdge!]! pageInfo: PageInfo! totalCount: Int }

type User {
  id: ID!
  name: String
  username: String
  email: String
  admin: Boolean
  flags: JSONString
  entity: String
  deletedAt: DateTime
  apiKeys: ApiKeyConnection
  teams(first: Int, after: String): EntityConnection
  organizations: [Organization!]!
}

type ServerFeature { name: String! isEnabled: Boolean! }
type VersionInfo { outOfDate: Boolean latestVersionString: String versionOnThisInstanceString: String }
type ServerInfo {
  features: [ServerFeature]!
  cliVersionInfo: JSONString
  latestLocalVersionInfo: VersionInfo
  availableBucketProviders: [String!]
}

type AdvancedRegistryFeatures { advancedSearch: Boolean! }
type Organization {
  id: ID!
  name: String!
  orgEntity: Entity
  advancedRegistryFeatures: AdvancedRegistryFeatures
}

type Entity {
  id: ID!
  name: String!
  isTeam: Boolean
  entityType: String
  projects(first: Int, after: String, filters: JSONString, order: String): ProjectConnection
  project(name: String): Project
  organization: Organization
  user: User
  artifactCollections(projectFilters: JSONString, filters: JSONString, collectionTypes: [ArtifactCollectionType!],
                      after: String, first: Int, order: String): ArtifactCollectionConnection
  artifactMemberships(projectFilters: JSONString, collectionFilters: JSONString, filters: JSONString,
                      after: String, first: Int, order: String): ArtifactCollectionMembershipConnection
}
type EntityEdge { cursor: String! node: Entity }
type EntityConnection { edges: [EntityEdge!]! pageInfo: PageInfo! totalCount: Int }

type Project {
  id: ID!
  internalId: ID!
  name: String!
  entityName: String!
  entity: Entity!
  description: String
  createdAt: DateTime
  updatedAt: DateTime
  access: String
  allowAllArtifactTypesInRegistry: Boolean
  isBenchmark: Boolean
  readOnly: Boolean
  user: User
  artifactTypes(first: Int, after: String, includeAll: Boolean): ArtifactTypeConnection!
  artifactType(name: String!): ArtifactType
  artifactCollections(first: Int, after: String, filters: JSONString, order: String,
                      collectionTypes: [ArtifactCollectionType!]): ArtifactCollectionConnection
  artifactCollection(name: String!): ArtifactCollection
  artifactCollectionMembership(name: String!): ArtifactCollectionMembership
  artifact(name: String!): Artifact
  run(name: String!): Run
  runs(first: Int, after: String, filters: JSONString, order: String): RunConnection
}
type ProjectEdge { cursor: String! node: Project }
type ProjectConnection { edges: [ProjectEdge!]! pageInfo: PageInfo! totalCount: Int }

enum ArtifactCollectionType { SEQUENCE PORTFOLIO }

type ArtifactType {
  id: ID!
  name: String!
  description: String
  createdAt: DateTime
  project: Project
  artifactCollections(first: Int, after: String, filters: JSONString, order: String,
                      collectionTypes: [ArtifactCollectionType!]): ArtifactCollectionConnection
  artifactCollection(name: String!): ArtifactCollection
  artifactSequences(first: Int, after: String, filters: JSONString, order: String): ArtifactCollectionConnection
  artifactSequence(name: String!): ArtifactSequence
}
type ArtifactTypeEdge { cursor: String! node: ArtifactType }
type ArtifactTypeConnection { edges: [ArtifactTypeEdge!]! pageInfo: PageInfo! totalCount: Int }

type Tag { id: ID! name: String! tagCategoryName: String attributes: JSONString }
type TagEdge { cursor: String! node: Tag! }
type TagConnection { edges: [TagEdge!]! pageInfo: PageInfo! totalCount: Int }

interface ArtifactCollection {
  id: ID!
  name: String!
  description: String
  state: String
  createdAt: DateTime!
  updatedAt: DateTime
  project: Project
  defaultArtifactType: ArtifactType!
  tags: TagConnection!
  aliases(first: Int, after: String): ArtifactAliasConnection!
  artifacts(first: Int, after: String, order: String, filters: JSONString): VersionedArtifactConnection
  artifactMemberships(first: Int, after: String, order: String,
                      filters: JSONString): ArtifactCollectionMembershipConnection!
  artifactMembership(aliasName: String!): ArtifactCollectionMembership
}

type ArtifactSequence implements ArtifactCollection {
  id: ID!
  name: String!
  description: String
  state: String
  createdAt: DateTime!
  updatedAt: DateTime
  project: Project
  defaultArtifactType: ArtifactType!
  tags: TagConnection!
  aliases(first: Int, after: String): ArtifactAliasConnection!
  artifacts(first: Int, after: String, order: String, filters: JSONString): VersionedArtifactConnection
  artifactMemberships(first: Int, after: String, order: String,
                      filters: JSONString): ArtifactCollectionMembershipConnection!
  artifactMembership(aliasName: String!): ArtifactCollectionMembership
  latestArtifact: Artifact
}
type ArtifactPortfolio implements ArtifactCollection {
  id: ID!
  name: String!
  description: String
  state: String
  createdAt: DateTime!
  updatedAt: DateTime
  project: Project
  defaultArtifactType: ArtifactType!
  tags: TagConnection!
  aliases(first: Int, after: String): ArtifactAliasConnection!
  artifacts(first: Int, after: String, order: String, filters: JSONString): VersionedArtifactConnection
  artifactMemberships(first: Int, after: String, order: String,
                      filters: JSONString): ArtifactCollectionMembershipConnection!
  artifactMembership(aliasName: String!): ArtifactCollectionMembership
}
type ArtifactCollectionEdge { cursor: String! node: ArtifactCollection }
type ArtifactCollectionConnection { edges: [ArtifactCollectionEdge!]! pageInfo: PageInfo! totalCount: Int! }

type ArtifactAlias { id: ID! alias: String! artifactCollection: ArtifactCollection artifact: Artifact }
type ArtifactAliasEdge { cursor: String! node: ArtifactAlias }
type ArtifactAliasConnection { edges: [ArtifactAliasEdge!]! pageInfo: PageInfo! totalCount: Int }

type ArtifactCollectionMembership {
  id: ID!
  versionIndex: Int
  createdAt: DateTime!
  aliases: [ArtifactAlias!]!
  artifactCollection: ArtifactCollection
  artifact: Artifact
  files(names: [String!], first: Int, after: String): FileConnection!
}
type ArtifactCollectionMembershipEdge { cursor: String! node: ArtifactCollectionMembership }
type ArtifactCollectionMembershipConnection {
  edges: [ArtifactCollectionMembershipEdge!]!
  pageInfo: PageInfo!
  totalCount: Int
}

type Artifact {
  id: ID!
  artifactSequence: ArtifactSequence!
  versionIndex: Int
  artifactType: ArtifactType!
  description: String
  metadata: JSONString
  ttlDurationSeconds: Int64!
  ttlIsInherited: Boolean!
  tags: [Tag!]!
  historyStep: Int64
  state: String!
  size: Int64!
  digest: String!
  digestAlgorithm: String
  commitHash: String
  fileCount: Int64!
  createdAt: DateTime!
  updatedAt: DateTime
  aliases: [ArtifactAlias!]!
  currentManifest: ArtifactManifest
  files(names: [String!], first: Int, after: String): FileConnection!
  createdBy: ArtifactCreator
  usedBy(first: Int, after: String): RunConnection!
  artifactMemberships(first: Int, after: String): ArtifactCollectionMembershipConnection!
}
type VersionedArtifactEdge { cursor: String! version: String! node: Artifact }
type VersionedArtifactConnection { edges: [VersionedArtifactEdge!]! pageInfo: PageInfo! totalCount: Int! }

type ArtifactManifest { id: ID! type: String createdAt: DateTime file: File! }

type File {
  id: ID!
  name: String!
  displayName: String!
  url: String
  directUrl: String!
  sizeBytes: Int64!
  storagePath: String
  mimetype: String
  updatedAt: DateTime
  digest: String
  md5: String
}
type FileEdge { cursor: String! node: File }
type FileConnection { edges: [FileEdge!]! pageInfo: PageInfo! totalCount: Int }

union ArtifactCreator = Run | User

type RunUser { name: String username: String }
type Run {
  id: ID!
  name: String!
  displayName: String
  projectId: ID
  project: Project
  state: String
  tags: [String!]!
  config: JSONString
  summaryMetrics: JSONString
  systemMetrics: JSONString
  group: String
  jobType: String
  commit: String
  readOnly: Boolean
  createdAt: DateTime
  heartbeatAt: DateTime
  description: String
  notes: String
  sweepName: String
  historyLineCount: Int
  historyKeys: JSONString
  user: RunUser
  inputArtifacts(first: Int, after: String): VersionedArtifactConnection
  outputArtifacts(first: Int, after: String): VersionedArtifactConnection
}
type RunEdge { cursor: String! node: Run }
type RunConnection { edges: [RunEdge!]! pageInfo: PageInfo! totalCount: Int }

input ArtifactAliasInput { artifactCollectionName: String! alias: String! }
input ArtifactCollectionAliasInput {
  artifactCollectionName: String!
  alias: String!
  entityName: String!
  projectName: String!
}
input TagInput { tagCategoryName: String tagName: String! attributes: JSONString }
input AddAliasesInput { artifactID: ID! aliases: [ArtifactCollectionAliasInput!]! clientMutationId: String }
input DeleteAliasesInput { artifactID: ID! aliases: [ArtifactCollectionAliasInput!]! clientMutationId: String }
input UpdateArtifactInput {
  artifactID: ID!
  description: String
  metadata: JSONString
  aliases: [ArtifactAliasInput!]
  labels: JSONString
  tagsToAdd: [TagInput!]
  tagsToDelete: [TagInput!]
  ttlDurationSeconds: Int64
  clientMutationId: String
}
input DeleteArtifactInput { artifactID: ID! deleteAliases: Boolean = false clientMutationId: String }
input LinkArtifactInput {
  artifactID: ID
  clientID: ID
  artifactPortfolioID: ID
  artifactPortfolioName: String
  entityName: String
  projectName: String
  aliases: [ArtifactAliasInput!]
  clientMutationId: String
}
input UnlinkArtifactInput { artifactID: ID! artifactPortfolioID: ID! clientMutationId: String }

type AddAliasesPayload { success: Boolean! clientMutationId: String }
type DeleteAliasesPayload { success: Boolean! clientMutationId: String }
type UpdateArtifactPayload { artifact: Artifact! clientMutationId: String }
type DeleteArtifactPayload { artifact: Artifact! clientMutationId: String }
type LinkArtifactPayload {
  versionIndex: Int
  artifactCollectionID: ID
  artifactID: ID
  artifactMembership: ArtifactCollectionMembership
  clientMutationId: String
}
type UnlinkArtifactPayload { artifactID: ID! success: Boolean! clientMutationId: String }

type Mutation {
  addAliases(input: AddAliasesInput!): AddAliasesPayload
  deleteAliases(input: DeleteAliasesInput!): DeleteAliasesPayload
  updateArtifact(input: UpdateArtifactInput!): UpdateArtifactPayload
  deleteArtifact(input: DeleteArtifactInput!): DeleteArtifactPayload
  linkArtifact(input: LinkArtifactInput!): LinkArtifactPayload
  unlinkArtifact(input: UnlinkArtifactInput!): UnlinkArtifactPayload
}
"""

# Features the SDK probes with ``serverInfo { features }``; all on unless the caller says otherwise.
DEFAULT_FEATURES = {
    "LARGE_FILENAMES": True,
    "ARTIFACT_TAGS": True,
    "ARTIFACT_COLLECTION_MEMBERSHIP_FILES": True,
    "ARTIFACT_COLLECTION_MEMBERSHIP_FILE_DOWNLOAD_HANDLER": True,
    "PROJECT_ARTIFACT_COLLECTION_MEMBERSHIP": True,
    "TOTAL_COUNT_IN_FILE_CONNECTION": True,
    "ARTIFACT_COLLECTIONS_FILTERING_SORTING": True,
    "ARTIFACT_V2_DOWNLOAD_HANDLER_SUPPORTS_ARTIFACT_ID": True,
    "ARTIFACT_DIGEST_ALGORITHM": True,
    "ARTIFACT_MEMBERSHIP_IN_LINK_ARTIFACT_RESPONSE": True,
    "ARTIFACT_REGISTRY_SEARCH": True,  # organization { orgEntity { projects / artifactCollections / ... } }
}

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
SEQUENCE = "SEQUENCE"
PORTFOLIO = "PORTFOLIO"
LATEST = "latest"


def _gid(kind: str, number: int | str) -> str:
    """W&B-style opaque id: base64 of ``Kind:number``."""
    return base64.b64encode(f"{kind}:{number}".encode()).decode("ascii")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _cursor(offset: int) -> str:
    return base64.b64encode(f"cursor:{offset}".encode()).decode("ascii")


def _offset_after(after: str | None) -> int:
    if not after:
        return 0
    try:
        text = base64.b64decode(after, validate=True).decode()
        kind, _, number = text.partition(":")
        if kind != "cursor":
            raise ValueError(text)
        return int(number) + 1
    except ValueError as exc:
        raise GraphQLError(f"invalid cursor {after!r}") from exc


def _page(
    items: Sequence[Any],
    first: int | None,
    after: str | None,
    node: Callable[[Any], Any] = lambda x: x,
    extra: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One Relay-style connection page over ``items`` (already in order)."""
    start = _offset_after(after)
    if first is not None and first < 0:
        raise GraphQLError("first must not be negative")
    end = len(items) if first is None else min(len(items), start + first)
    edges = []
    for offset in range(start, end):
        item = items[offset]
        edge = {"cursor": _cursor(offset), "node": node(item)}
        if extra is not None:
            edge.update(extra(item))
        edges.append(edge)
    return {
        "edges": edges,
        "pageInfo": {
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasNextPage": end < len(items),
            "hasPreviousPage": start > 0,
        },
        "totalCount": len(items),
    }


# ----------------------------------------------------------------------------- records


@dataclass
class ArtifactRecord:
    """One artifact version as the server stores it (see the module docstring)."""

    id: str
    number: int
    entity: str
    project: str
    name: str
    type: str
    version_index: int
    digest: str
    digest_algorithm: str
    manifest: dict[str, Any]
    manifest_bytes: bytes
    files: dict[str, bytes]
    metadata: dict[str, Any]
    description: str
    created_at: float
    membership_id: str
    collection_id: str
    run: str | None = None
    used_by: list[str] = field(default_factory=list)
    deleted: bool = False
    file_digests: dict[str, str] = field(default_factory=dict)  # path -> entry digest (b64)
    tags: list[str] = field(default_factory=list)
    ttl_duration_seconds: int = -2  # W&B: -2 = inherit the collection's (none), -1 = never expires
    updated_at: float = 0.0  # moved by every mutation of it (edit, alias, link); 0 = created_at
    _collection: _Collection | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return f"v{self.version_index}"

    @property
    def aliases(self) -> list[str]:
        coll = self._collection
        if coll is None:
            return []
        return sorted(a for a, i in coll.aliases.items() if i == self.version_index)

    @property
    def size(self) -> int:
        contents = self.manifest.get("contents")
        if isinstance(contents, dict):
            total = 0
            for entry in contents.values():
                size = entry.get("size") if isinstance(entry, dict) else None
                if isinstance(size, int):
                    total += size
            return total
        return sum(len(b) for b in self.files.values())


@dataclass
class _Run:
    id: str
    name: str  # the run id inside its project (W&B's Run.name)
    entity: str
    project: str
    created_at: float
    display_name: str = ""
    job_type: str | None = None
    state: str = "finished"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Type:
    id: str
    name: str
    created_at: float


@dataclass
class _Collection:
    id: str
    number: int
    entity: str
    project: str
    name: str
    type: str
    created_at: float
    versions: dict[int, ArtifactRecord] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    next_index: int = 0
    description: str = ""
    kind: str = SEQUENCE  # or PORTFOLIO: a collection of links to versions of sequences
    linked_at: dict[int, float] = field(default_factory=dict)  # portfolio index -> when linked

    def live(self) -> list[ArtifactRecord]:
        return [r for r in self.versions.values() if not r.deleted]

    def live_items(self) -> list[tuple[int, ArtifactRecord]]:
        """``(index in this collection, version)``, oldest first (a portfolio numbers its own)."""
        return [(i, r) for i, r in self.versions.items() if not r.deleted]

    def index_of(self, rec: ArtifactRecord) -> int | None:
        return next((i for i, r in self.versions.items() if r is rec), None)

    def resolve_index(self, alias: str) -> int | None:
        """The index an alias, ``vN`` or artifact digest names (as W&B resolves ``name:<alias>``)."""
        index = self.aliases.get(alias)
        if index is None and re.fullmatch(r"v\d+", alias):
            index = int(alias[1:])
        rec = self.versions.get(index) if index is not None else None
        if rec is None and re.fullmatch(r"[0-9a-f]{32}", alias):
            index = next((i for i, r in self.versions.items() if r.digest == alias and not r.deleted), None)
            rec = self.versions.get(index) if index is not None else None
        return None if rec is None or rec.deleted else index

    def resolve(self, alias: str) -> ArtifactRecord | None:
        index = self.resolve_index(alias)
        return None if index is None else self.versions[index]

    def aliases_at(self, index: int) -> list[str]:
        return sorted(a for a, i in self.aliases.items() if i == index)

    def move_latest(self) -> None:
        """After a member went away with its aliases: ``latest``, if it went too, moves to the
        newest live member."""
        live = self.live_items()
        if live and LATEST not in self.aliases:
            self.aliases[LATEST] = live[-1][0]


@dataclass
class _Project:
    id: str
    number: int
    entity: str
    name: str
    created_at: float
    collections: dict[str, _Collection] = field(default_factory=dict)
    types: dict[str, _Type] = field(default_factory=dict)
    runs: dict[str, _Run] = field(default_factory=dict)


@dataclass
class _Org:
    """An organization: its display name, its own entity (registries live there), the teams in
    it, and whether the viewer belongs to it."""

    id: str
    name: str
    entity: str
    teams: list[str] = field(default_factory=list)
    member: bool = True

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "orgEntity": _EntityView(self.entity),
            "advancedRegistryFeatures": {"advancedSearch": False},
        }


REGISTRY_PREFIX = "wandb-registry-"


@dataclass
class Request:
    """One request as the server saw it.  ``operation`` is the GraphQL operation name (from
    ``operationName`` or the query text), ``status`` the status sent (0 until headers went out)."""

    method: str
    path: str
    operation: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    query: str = ""
    status: int = 0
    range: str | None = None
    authorized: bool = False
    time: float = field(default_factory=time.monotonic)

    @property
    def fields(self) -> dict[str, dict[str, str]]:
        """Every field the query selects (at any depth, fragments included): name -> its
        arguments as GraphQL source text, e.g. ``{"files": {"names": "$names", "first": "$n"}}``.
        A field selected twice keeps the last arguments.  Empty for a query that does not parse."""
        try:
            document = graphql.parse(self.query)
        except GraphQLError:
            return {}
        out: dict[str, dict[str, str]] = {}

        class _Visitor(graphql.Visitor):
            def enter_field(self, node: graphql.FieldNode, *_: Any) -> None:
                out[node.name.value] = {a.name.value: graphql.print_ast(a.value) for a in node.arguments or ()}

        graphql.visit(document, _Visitor())
        return out


# ----------------------------------------------------------------------------- faults


@dataclass
class _Rule:
    kind: str
    value: Any
    times: int | None  # None: every request until cleared
    match: str | None

    def applies(self, path: str) -> bool:
        return (self.times is None or self.times > 0) and (self.match is None or self.match in path)


class Faults:
    """Switches that make the next requests misbehave.  Thread-safe; each call adds a rule.

    Every rule has ``times`` (how many requests it hits; None = until ``clear()``) and ``match``
    (a substring of the unquoted request path, e.g. a file name, or None for any).  For one
    request, the first live matching rule of each kind is used and its count decremented, and
    only when it changed that request: a slow first byte combines with anything; a status wins
    over an expiry (which then stays queued); the body faults (slow body, reset, truncate,
    corrupt) combine with each other and are left queued by answers without a body (a status,
    403, 416, HEAD, an empty file).

    Blob GETs (presigned files, the manifest, the authenticated fallbacks):
    - ``status(code, times=1, match=None, retry_after=None)``: answer ``code`` (e.g. 503, 500,
      429 with ``Retry-After``) and a short body instead of the blob.
    - ``expire(times=1, match=None)``: answer 403 as for an expired signature (also the real
      thing: a URL older than ``url_ttl`` is refused).
    - ``slow_first_byte(seconds, ...)``: sleep before sending the status line.
    - ``slow_body(bytes_per_second, ...)``: trickle the body.
    - ``reset_after(n_bytes, ...)``: send the headers and ``n_bytes`` of the body, then reset the
      connection (RST, SO_LINGER 0).
    - ``truncate_after(n_bytes, ...)``: full ``Content-Length``, ``n_bytes`` of body, clean close.
    - ``corrupt(...)``: flip one byte of the body (the middle one), same length.
    /graphql:
    - ``graphql_status(code, times=1, retry_after=None, match=None)``: ``match`` is a substring
      of the operation name.  Applied before the key is checked.
    - ``wrong_key``: a bool switch; while True every /graphql request is refused with 401 as if
      the key were wrong (a wrong or missing key gets the same 401 without any switch).
    - ``null_viewer``: a bool switch; while True an authorized request is answered, but
      ``viewer`` resolves to null (what W&B answers for a key it does not know on some paths).
    ``clear()`` removes every rule and resets both switches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.wrong_key = False
        self.null_viewer = False

    def _add(self, kind: str, value: Any, times: int | None, match: str | None) -> None:
        with self._lock:
            self._rules.append(_Rule(kind, value, times, match))

    def status(
        self, code: int, times: int | None = 1, match: str | None = None, retry_after: float | None = None
    ) -> None:
        self._add("status", (code, retry_after), times, match)

    def expire(self, times: int | None = 1, match: str | None = None) -> None:
        self._add("expire", True, times, match)

    def slow_first_byte(self, seconds: float, times: int | None = 1, match: str | None = None) -> None:
        self._add("slow_first_byte", seconds, times, match)

    def slow_body(self, bytes_per_second: float, times: int | None = 1, match: str | None = None) -> None:
        self._add("slow_body", bytes_per_second, times, match)

    def reset_after(self, n_bytes: int, times: int | None = 1, match: str | None = None) -> None:
        self._add("reset_after", n_bytes, times, match)

    def truncate_after(self, n_bytes: int, times: int | None = 1, match: str | None = None) -> None:
        self._add("truncate_after", n_bytes, times, match)

    def corrupt(self, times: int | None = 1, match: str | None = None) -> None:
        self._add("corrupt", True, times, match)

    def graphql_status(
        self, code: int, times: int | None = 1, retry_after: float | None = None, match: str | None = None
    ) -> None:
        self._add("graphql_status", (code, retry_after), times, match)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self.wrong_key = False
            self.null_viewer = False

    def pending(self) -> int:
        """How many counted hits are left (rules with ``times=None`` count as one)."""
        with self._lock:
            return sum(1 if r.times is None else r.times for r in self._rules)

    def take(self, kinds: Sequence[str], path: str) -> dict[str, Any]:
        """The faults for one request (kind -> value), consuming one hit of each rule used."""
        out: dict[str, Any] = {}
        with self._lock:
            for rule in self._rules:
                if rule.kind in kinds and rule.kind not in out and rule.applies(path):
                    out[rule.kind] = rule.value
                    if rule.times is not None:
                        rule.times -= 1
            self._rules = [r for r in self._rules if r.times is None or r.times > 0]
        return out


_BODY_FAULTS = ("slow_body", "reset_after", "truncate_after", "corrupt")


# ----------------------------------------------------------------------------- GraphQL views
# The default field resolver reads attributes (or dict keys) named like the fields and calls
# them with (info, **args) when they are callable, so each view is a plain class.


def _srv(info: Info) -> WandbServer:
    return info.context


# -- mutations (the root of a mutation operation is a _Root too)
# Each checks everything before it changes anything, so a refused mutation changes nothing.


def _live_artifact(srv: WandbServer, artifact_id: str) -> ArtifactRecord:
    rec = srv._by_id.get(artifact_id)
    if rec is None or rec.deleted:
        raise GraphQLError(f"artifact {artifact_id} not found")
    return rec


def _check_write(srv: WandbServer, entity: str, project: str) -> None:
    if not srv.can_write(entity, project):
        raise GraphQLError("permission denied")


def _check_alias(alias: str, *, latest_ok: bool = False) -> str:
    if alias == LATEST and not latest_ok:
        raise GraphQLError("alias 'latest' is reserved: the server moves it to the newest version itself")
    if not alias or len(alias) > 128 or "/" in alias or ":" in alias:
        raise GraphQLError(f"invalid alias {alias!r}: 1-128 characters, no '/' or ':'")
    if re.fullmatch(r"v\d+", alias):
        raise GraphQLError(f"invalid alias {alias!r}: names of the form vN are versions")
    return alias


def _member_of(srv: WandbServer, rec: ArtifactRecord, entity: str, project: str, name: str) -> tuple[_Collection, int]:
    """Where ``rec`` sits in the collection ``entity/project/name`` (its sequence or a portfolio)."""
    proj = srv._projects.get((entity, project))
    coll = proj.collections.get(name) if proj is not None else None
    if coll is None:
        raise GraphQLError(f"artifact collection {entity}/{project}/{name} not found")
    index = coll.index_of(rec)
    if index is None:
        raise GraphQLError(f"artifact {rec.name}:{rec.version} not found in collection {entity}/{project}/{name}")
    return coll, index


def _alias_targets(srv: WandbServer, inp: dict[str, Any]) -> tuple[ArtifactRecord, list[tuple[_Collection, int, str]]]:
    rec = _live_artifact(srv, inp["artifactID"])
    targets = []
    for a in inp["aliases"]:
        coll, index = _member_of(srv, rec, a["entityName"], a["projectName"], a["artifactCollectionName"])
        _check_write(srv, coll.entity, coll.project)
        targets.append((coll, index, _check_alias(a["alias"])))
    return rec, targets


class _Mutations:
    def addAliases(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Point each alias at the artifact in its collection (moving it from another member)."""
        srv = _srv(info)
        rec, targets = _alias_targets(srv, input)
        for coll, index, alias in targets:
            coll.aliases[alias] = index
        if targets:
            rec.updated_at = srv._now()
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    def deleteAliases(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Remove aliases of the artifact; one it does not have is an error (nothing changes)."""
        srv = _srv(info)
        rec, targets = _alias_targets(srv, input)
        for coll, index, alias in targets:
            if coll.aliases.get(alias) != index:
                raise GraphQLError(f"alias {alias!r} not found on artifact {coll.name}:v{index}")
        for coll, _, alias in targets:
            del coll.aliases[alias]
        if targets:
            rec.updated_at = srv._now()
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    def updateArtifact(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Description, metadata (a JSON object as text), tags, TTL; ``aliases`` (the older way)
        replaces the artifact's aliases in each collection it names.  Absent fields stay."""
        srv = _srv(info)
        rec = _live_artifact(srv, input["artifactID"])
        _check_write(srv, rec.entity, rec.project)
        metadata: dict[str, Any] | None = None
        if input.get("metadata") is not None:
            try:
                value = json.loads(input["metadata"]) if isinstance(input["metadata"], str) else input["metadata"]
            except ValueError as exc:
                raise GraphQLError(f"invalid metadata: not JSON ({exc})") from None
            if not isinstance(value, dict):
                raise GraphQLError("invalid metadata: expected a JSON object")
            metadata = value
        replace: dict[str, list[str]] = {}
        for a in input.get("aliases") or []:
            replace.setdefault(a["artifactCollectionName"], []).append(_check_alias(a["alias"]))
        members = {
            c.name: (c, i) for c, i in srv.memberships(rec) if (c.entity, c.project) == (rec.entity, rec.project)
        }
        for name in replace:
            if name not in members:
                raise GraphQLError(f"artifact {rec.name}:{rec.version} not found in collection {name}")
        if input.get("description") is not None:
            rec.description = input["description"]
        if metadata is not None:
            rec.metadata = metadata
        for tag in input.get("tagsToAdd") or []:
            if tag["tagName"] not in rec.tags:
                rec.tags.append(tag["tagName"])
        gone = {t["tagName"] for t in input.get("tagsToDelete") or []}
        rec.tags = [t for t in rec.tags if t not in gone]
        if input.get("ttlDurationSeconds") is not None:
            rec.ttl_duration_seconds = int(input["ttlDurationSeconds"])
        for name, aliases in replace.items():
            coll, index = members[name]
            coll.aliases = {a: i for a, i in coll.aliases.items() if i != index or a == LATEST}
            coll.aliases.update(dict.fromkeys(aliases, index))
        rec.updated_at = srv._now()
        return {"artifact": _ArtifactView(rec), "clientMutationId": input.get("clientMutationId")}

    def deleteArtifact(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Soft delete; refused while aliases other than ``latest`` name it (in any collection)
        unless ``deleteAliases``."""
        srv = _srv(info)
        rec = _live_artifact(srv, input["artifactID"])
        _check_write(srv, rec.entity, rec.project)
        held = [f"{c.name}:{a}" for c, i in srv.memberships(rec) for a in c.aliases_at(i) if a != LATEST]
        if held and not input.get("deleteAliases"):
            raise GraphQLError(
                f"cannot delete artifact {rec.name}:{rec.version} while it has aliases ({', '.join(held)}): "
                "set deleteAliases to delete them with it"
            )
        srv._soft_delete(rec)
        return {"artifact": _ArtifactView(rec), "clientMutationId": input.get("clientMutationId")}

    def linkArtifact(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Link an artifact into a portfolio, by ``artifactPortfolioID`` or by ``entityName``,
        ``projectName`` and ``artifactPortfolioName`` (made on first use)."""
        srv = _srv(info)
        if not input.get("artifactID"):
            raise GraphQLError("artifactID is required (this server does not resolve clientID)")
        rec = _live_artifact(srv, input["artifactID"])
        if input.get("artifactPortfolioID"):
            coll = srv._collections_by_id.get(input["artifactPortfolioID"])
            if coll is None or coll.kind != PORTFOLIO:
                raise GraphQLError(f"artifact portfolio {input['artifactPortfolioID']} not found")
            entity, project, name = coll.entity, coll.project, coll.name
        else:
            entity, project, name = (
                str(input.get(k) or "") for k in ("entityName", "projectName", "artifactPortfolioName")
            )
            if not (entity and project and name):
                raise GraphQLError("entityName, projectName and artifactPortfolioName are required")
        if (entity, project) not in srv._projects:
            raise GraphQLError(f"project {entity}/{project} not found")
        _check_write(srv, entity, project)
        aliases = []
        for a in input.get("aliases") or []:
            if a["artifactCollectionName"] != name:
                raise GraphQLError(
                    f"alias {a['alias']!r} names collection {a['artifactCollectionName']!r}, not {name!r}"
                )
            aliases.append(_check_alias(a["alias"], latest_ok=True))
        try:
            coll, index = srv.link(rec, entity, project, name, aliases)
        except ValueError as exc:
            raise GraphQLError(str(exc)) from None
        return {
            "versionIndex": index,
            "artifactCollectionID": coll.id,
            "artifactID": rec.id,
            "artifactMembership": _MembershipView(coll, index, rec),
            "clientMutationId": input.get("clientMutationId"),
        }

    def unlinkArtifact(self, info: Info, input: dict[str, Any]) -> dict[str, Any]:
        """Remove the artifact from a portfolio (its aliases there go; ``latest`` moves back)."""
        srv = _srv(info)
        rec = _live_artifact(srv, input["artifactID"])
        coll = srv._collections_by_id.get(input["artifactPortfolioID"])
        if coll is None or coll.kind != PORTFOLIO:
            raise GraphQLError(f"artifact portfolio {input['artifactPortfolioID']} not found")
        _check_write(srv, coll.entity, coll.project)
        index = coll.index_of(rec)
        if index is None:
            raise GraphQLError(f"artifact {rec.name}:{rec.version} not found in collection {coll.name}")
        del coll.versions[index]
        coll.linked_at.pop(index, None)
        coll.aliases = {a: i for a, i in coll.aliases.items() if i != index}
        coll.move_latest()
        return {"artifactID": rec.id, "success": True, "clientMutationId": input.get("clientMutationId")}


class _Root(_Mutations):
    def viewer(self, info: Info) -> dict[str, Any] | None:
        srv = _srv(info)
        return None if srv.faults.null_viewer else srv._viewer()

    def serverInfo(self, info: Info) -> dict[str, Any]:
        srv = _srv(info)
        return {
            "features": [{"name": k, "isEnabled": v} for k, v in srv.features.items()],
            "cliVersionInfo": json.dumps({}),
            "latestLocalVersionInfo": None,
            "availableBucketProviders": [],
        }

    def entity(self, info: Info, name: str | None = None) -> _EntityView | None:
        srv = _srv(info)
        name = name or srv.viewer_entity
        return _EntityView(name) if name in srv._entities() else None

    def project(
        self,
        info: Info,
        name: str | None = None,
        entityName: str | None = None,
    ) -> _ProjectView | None:
        srv = _srv(info)
        proj = srv._projects.get((entityName or srv.viewer_entity, name or ""))
        return _ProjectView(proj) if proj and srv.visible(proj.entity, proj.name) else None

    def artifact(self, info: Info, id: str) -> _ArtifactView | None:
        rec = _srv(info)._by_id.get(id)
        return _ArtifactView(rec) if rec is not None and not rec.deleted else None

    def artifactCollection(self, info: Info, id: str) -> _CollectionView | None:
        coll = _srv(info)._collections_by_id.get(id)
        return _CollectionView(coll) if coll else None

    def organization(self, info: Info, name: str | None = None) -> dict[str, Any] | None:
        """An organization the viewer belongs to, by its display name (null otherwise)."""
        org = _srv(info)._orgs.get(name or "")
        return org.view() if org is not None and org.member else None

    def models(
        self,
        info: Info,
        entityName: str | None = None,
        first: int | None = None,
        after: str | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        """The projects of an entity (what ``Api.projects()`` asks for under this old name)."""
        srv = _srv(info)
        entity = entityName or srv.viewer_entity
        items = [p for (e, _), p in srv._projects.items() if e == entity and srv.visible(e, p.name)]
        return _page(_ordered(items, order), first, after, _ProjectView)


class _EntityView:
    def __init__(self, name: str) -> None:
        self.name = name
        self.id = _gid("Entity", name)

    def isTeam(self, info: Info) -> bool:
        return self.name != _srv(info).viewer_entity

    def entityType(self, info: Info) -> str:
        srv = _srv(info)
        if self.name == srv.viewer_entity:
            return "user"
        return "organization" if srv._org_of_entity(self.name, own=True) else "team"

    def projects(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filters: str | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        srv = _srv(info)
        items = [
            p
            for (e, _), p in srv._projects.items()
            if e == self.name and srv.visible(e, p.name) and _matches(filters, _project_fields(p))
        ]
        return _page(_ordered(items, order), first, after, _ProjectView)

    def project(self, info: Info, name: str | None = None) -> _ProjectView | None:
        srv = _srv(info)
        proj = srv._projects.get((self.name, name or ""))
        return _ProjectView(proj) if proj and srv.visible(proj.entity, proj.name) else None

    def organization(self, info: Info) -> dict[str, Any] | None:
        """An organization's own entity, or a team of one: that organization (a personal
        entity has none: its user's ``organizations`` list them)."""
        org = _srv(info)._org_of_entity(self.name)
        return org.view() if org is not None else None

    def _registry_collections(self, info: Info, projectFilters: str | None, filters: str | None) -> list[_Collection]:
        srv = _srv(info)
        out = []
        for (e, _), p in srv._projects.items():
            if e != self.name or not srv.visible(e, p.name) or not _matches(projectFilters, _project_fields(p)):
                continue
            out.extend(c for c in p.collections.values() if c.live() and _matches(filters, _collection_fields(c)))
        return out

    def artifactCollections(
        self,
        info: Info,
        projectFilters: str | None = None,
        filters: str | None = None,
        collectionTypes: list[str] | None = None,
        after: str | None = None,
        first: int | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        """Collections of the entity's projects (for an organization's entity: its registries'),
        as the SDK's RegistryCollections asks."""
        colls = [c for c in self._registry_collections(info, projectFilters, filters) if _kind_ok(c, collectionTypes)]
        return _page(_ordered(colls, order), first, after, _CollectionView)

    def artifactMemberships(
        self,
        info: Info,
        projectFilters: str | None = None,
        collectionFilters: str | None = None,
        filters: str | None = None,
        after: str | None = None,
        first: int | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        """Every live member of those collections (newest first within each), as RegistryVersions asks."""
        items = [
            (c, i, r)
            for c in self._registry_collections(info, projectFilters, collectionFilters)
            for i, r in reversed(c.live_items())
            if _matches(filters, {"alias": c.aliases_at(i), "version": f"v{i}"})
        ]
        return _page(items, first, after, lambda cir: _MembershipView(*cir))

    def user(self, info: Info) -> dict[str, Any] | None:
        srv = _srv(info)
        return srv._viewer() if self.name == srv.viewer_entity else None


class _ProjectView:
    def __init__(self, proj: _Project) -> None:
        self.p = proj
        self.id = proj.id
        self.internalId = _gid("ProjectInternalId", proj.number)
        self.name = proj.name
        self.entityName = proj.entity
        self.entity = _EntityView(proj.entity)
        self.description = ""
        self.createdAt = _iso(proj.created_at)
        self.updatedAt = _iso(proj.created_at)
        self.access = "PRIVATE"
        self.allowAllArtifactTypesInRegistry = True
        self.isBenchmark = False

    def readOnly(self, info: Info) -> bool:
        return not _srv(info).can_write(self.p.entity, self.p.name)

    def user(self, info: Info) -> dict[str, Any]:
        return _srv(info)._viewer()  # every project belongs to the one user there is

    def artifactTypes(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        includeAll: bool | None = None,
    ) -> dict[str, Any]:
        return _page(list(self.p.types.values()), first, after, lambda t: _TypeView(self.p, t))

    def artifactType(self, info: Info, name: str) -> _TypeView | None:
        t = self.p.types.get(name)
        return _TypeView(self.p, t) if t else None

    def artifactCollections(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filters: str | None = None,
        order: str | None = None,
        collectionTypes: list[str] | None = None,
    ) -> dict[str, Any]:
        colls = [c for c in self.p.collections.values() if c.live() and _kind_ok(c, collectionTypes)]
        return _page(_ordered(colls, order), first, after, _CollectionView)

    def artifactCollection(self, info: Info, name: str) -> _CollectionView | None:
        coll = self.p.collections.get(name)
        return _CollectionView(coll) if coll else None

    def artifactCollectionMembership(
        self,
        info: Info,
        name: str,
    ) -> _MembershipView | None:
        found = _resolve_name(self.p, name)
        return _MembershipView(*found) if found else None

    def artifact(self, info: Info, name: str) -> _ArtifactView | None:
        found = _resolve_name(self.p, name)
        return _ArtifactView(found[2]) if found else None

    def run(self, info: Info, name: str) -> _RunView | None:
        run = self.p.runs.get(name)
        return _RunView(self.p, run) if run else None

    def runs(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filters: str | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        return _page(list(self.p.runs.values()), first, after, lambda r: _RunView(self.p, r))


def _project_fields(p: _Project) -> dict[str, Any]:
    return {"name": p.name, "id": p.number, "entity_id": p.entity}


def _collection_fields(c: _Collection) -> dict[str, Any]:
    return {"name": c.name, "id": c.id, "description": c.description}


def _matches(filters: Any, fields: Mapping[str, Any]) -> bool:
    """A MongoDB-style filter (JSON text or a dict, as the SDK's registry searches send) against
    ``fields``: ``$and``, ``$or``, ``$eq``, ``$in``, ``$regex`` on the fields named; a field
    ``fields`` lacks, or another operator, is accepted and ignored.  A list-valued field (aliases)
    matches when any of its items does."""
    if filters is None or filters == "":
        return True
    if isinstance(filters, str):
        try:
            filters = json.loads(filters)
        except ValueError as exc:
            raise GraphQLError(f"invalid filters: {exc}") from None
    if not isinstance(filters, dict):
        return True
    for key, cond in filters.items():
        if key == "$and":
            if not all(_matches(c, fields) for c in cond):
                return False
        elif key == "$or":
            if not any(_matches(c, fields) for c in cond):
                return False
        elif key in fields:
            value = fields[key]
            values = value if isinstance(value, list) else [value]
            if not any(_match_one(cond, v) for v in values):
                return False
    return True


def _match_one(cond: Any, value: Any) -> bool:
    if not isinstance(cond, dict):
        return bool(cond == value)
    for op, arg in cond.items():
        if op == "$eq" and arg != value:
            return False
        if op == "$in" and value not in arg:
            return False
        if op == "$regex" and not re.search(str(arg), str(value)):
            return False
    return True


def _ordered(items: list[_Named], order: str | None) -> list[_Named]:
    """Creation order; ``"name"`` sorts by name; a leading ``-`` reverses either."""
    if order and order.lstrip("-+") == "name":
        return sorted(items, key=lambda c: c.name, reverse=order.startswith("-"))
    if order and order.startswith("-"):
        return list(reversed(items))
    return items


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


_Named = TypeVar("_Named", bound=_HasName)


def _resolve_name(proj: _Project, name: str) -> tuple[_Collection, int, ArtifactRecord] | None:
    coll_name, _, alias = name.partition(":")
    coll = proj.collections.get(coll_name)
    index = coll.resolve_index(alias or LATEST) if coll else None
    return None if coll is None or index is None else (coll, index, coll.versions[index])


def _kind_ok(coll: _Collection, kinds: list[str] | None) -> bool:
    return kinds is None or coll.kind in kinds


class _TypeView:
    def __init__(self, proj: _Project, t: _Type) -> None:
        self.p = proj
        self.id = t.id
        self.name = t.name
        self.description = None
        self.createdAt = _iso(t.created_at)
        self.project = _ProjectView(proj)

    def _colls(self, kinds: list[str] | None) -> list[_Collection]:
        return [c for c in self.p.collections.values() if c.type == self.name and c.live() and _kind_ok(c, kinds)]

    def artifactCollections(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filters: str | None = None,
        order: str | None = None,
        collectionTypes: list[str] | None = None,
    ) -> dict[str, Any]:
        return _page(_ordered(self._colls(collectionTypes), order), first, after, _CollectionView)

    def artifactSequences(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filters: str | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        return _page(_ordered(self._colls([SEQUENCE]), order), first, after, _CollectionView)

    def artifactCollection(self, info: Info, name: str) -> _CollectionView | None:
        coll = self.p.collections.get(name)
        return _CollectionView(coll) if coll and coll.type == self.name else None

    def artifactSequence(self, info: Info, name: str) -> _CollectionView | None:
        coll = self.p.collections.get(name)
        return _CollectionView(coll) if coll and coll.type == self.name and coll.kind == SEQUENCE else None


class _CollectionView:
    def __init__(self, coll: _Collection) -> None:
        self.c = coll
        self.id = coll.id
        self.name = coll.name
        self.description = coll.description
        self.state = "READY"
        self.createdAt = _iso(coll.created_at)
        self.updatedAt = _iso(coll.created_at)
        self.tags = _page([], None, None)

    def project(self, info: Info) -> _ProjectView | None:
        srv = _srv(info)
        if not srv.visible(self.c.entity, self.c.project):
            return None  # the reader may see a link's artifact, not where it was logged
        return _ProjectView(srv._projects[(self.c.entity, self.c.project)])

    def defaultArtifactType(self, info: Info) -> _TypeView:
        proj = _srv(info)._projects[(self.c.entity, self.c.project)]
        return _TypeView(proj, proj.types[self.c.type])

    def aliases(self, info: Info, first: int | None = None, after: str | None = None) -> dict[str, Any]:
        items = sorted(self.c.aliases.items())
        return _page(items, first, after, lambda kv: _AliasView(self.c, kv[0], kv[1]))

    def _versions(self, order: str | None) -> list[tuple[int, ArtifactRecord]]:
        items = self.c.live_items()
        if order and order.lstrip("+") in ("versionIndex", "createdAt"):
            return items
        return list(reversed(items))

    def artifacts(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        order: str | None = None,
        filters: str | None = None,
    ) -> dict[str, Any]:
        return _page(
            self._versions(order), first, after, lambda ir: _ArtifactView(ir[1]), lambda ir: {"version": f"v{ir[0]}"}
        )

    def artifactMemberships(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        order: str | None = None,
        filters: str | None = None,
    ) -> dict[str, Any]:
        return _page(self._versions(order), first, after, lambda ir: _MembershipView(self.c, *ir))

    def artifactMembership(self, info: Info, aliasName: str) -> _MembershipView | None:
        index = self.c.resolve_index(aliasName)
        return None if index is None else _MembershipView(self.c, index, self.c.versions[index])

    def latestArtifact(self, info: Info) -> _ArtifactView | None:
        rec = self.c.resolve("latest")
        return _ArtifactView(rec) if rec else None


class _AliasView:
    def __init__(self, coll: _Collection, alias: str, index: int) -> None:
        self.c = coll
        self.alias = alias
        self.index = index
        self.id = _gid("ArtifactAlias", f"{coll.number}:{alias}")
        self.artifactCollection = _CollectionView(coll)

    def artifact(self, info: Info) -> _ArtifactView | None:
        rec = self.c.versions.get(self.index)
        return _ArtifactView(rec) if rec else None


def _alias_views(info: Info, rec: ArtifactRecord) -> list[_AliasView]:
    """Its aliases in every collection it is in (each alias names its collection)."""
    return [_AliasView(c, a, i) for c, i in _srv(info).memberships(rec) for a in c.aliases_at(i)]


class _FilesMixin:
    rec: ArtifactRecord

    def files(
        self,
        info: Info,
        names: list[str] | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        rec = self.rec
        if names is not None:
            paths = [n for n in dict.fromkeys(names) if n in rec.files]
        else:
            paths = sorted(rec.files)
        srv = _srv(info)
        return _page(paths, first, after, lambda p: srv._file_node(rec, p))


class _MembershipView(_FilesMixin):
    """``rec`` as member ``index`` of ``coll`` (its own sequence, or a portfolio it is linked into)."""

    def __init__(self, coll: _Collection, index: int, rec: ArtifactRecord) -> None:
        self.c = coll
        self.index = index
        self.rec = rec
        linked = coll.kind == PORTFOLIO
        self.id = _gid("ArtifactCollectionMembership", f"{coll.number}:{index}") if linked else rec.membership_id
        self.versionIndex = index
        self.createdAt = _iso(coll.linked_at.get(index, rec.created_at))
        self.artifactCollection = _CollectionView(coll)
        self.artifact = _ArtifactView(rec)

    def aliases(self, info: Info) -> list[_AliasView]:
        return [_AliasView(self.c, a, self.index) for a in self.c.aliases_at(self.index)]


class _ArtifactView(_FilesMixin):
    def __init__(self, rec: ArtifactRecord) -> None:
        self.rec = rec
        self.id = rec.id
        self.versionIndex = rec.version_index
        self.description = rec.description
        self.metadata = json.dumps(rec.metadata)
        self.ttlDurationSeconds = rec.ttl_duration_seconds
        self.ttlIsInherited = rec.ttl_duration_seconds == -2
        self.tags = [{"id": _gid("Tag", t), "name": t, "tagCategoryName": None, "attributes": None} for t in rec.tags]
        self.historyStep = None
        self.state = "DELETED" if rec.deleted else "COMMITTED"
        self.size = rec.size
        self.digest = rec.digest
        self.digestAlgorithm = MANIFEST_ALGORITHM[rec.digest_algorithm]
        self.commitHash = rec.digest[:12]
        self.createdAt = _iso(rec.created_at)
        self.updatedAt = _iso(rec.updated_at or rec.created_at)
        assert rec._collection is not None
        self.artifactSequence = _CollectionView(rec._collection)

    def fileCount(self, info: Info) -> int:
        contents = self.rec.manifest.get("contents")
        return len(contents) if isinstance(contents, dict) else len(self.rec.files)

    def artifactType(self, info: Info) -> _TypeView:
        proj = _srv(info)._projects[(self.rec.entity, self.rec.project)]
        return _TypeView(proj, proj.types[self.rec.type])

    def aliases(self, info: Info) -> list[_AliasView]:
        return _alias_views(info, self.rec)

    def currentManifest(self, info: Info) -> dict[str, Any]:
        srv = _srv(info)
        key = hashlib.md5(self.rec.manifest_bytes, usedforsecurity=False).hexdigest()
        url = srv.url + srv.sign(f"/files/{key}/wandb_manifest.json")
        return {
            "id": _gid("ArtifactManifest", self.rec.number),
            "type": "FULL",
            "createdAt": self.createdAt,
            "file": {
                "id": _gid("File", f"manifest:{self.rec.number}"),
                "name": "wandb_manifest.json",
                "displayName": "wandb_manifest.json",
                "url": url,
                "directUrl": url,
                "sizeBytes": len(self.rec.manifest_bytes),
                "storagePath": None,
                "mimetype": "application/json",
                "updatedAt": self.createdAt,
                "digest": digest_bytes(self.rec.manifest_bytes),
                "md5": digest_bytes(self.rec.manifest_bytes),
            },
        }

    def createdBy(self, info: Info) -> _RunView | None:
        if self.rec.run is None or not _srv(info).visible(self.rec.entity, self.rec.project):
            return None
        proj = _srv(info)._projects[(self.rec.entity, self.rec.project)]
        return _RunView(proj, proj.runs[self.rec.run])

    def usedBy(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        srv = _srv(info)
        proj = srv._projects[(self.rec.entity, self.rec.project)]
        runs = [proj.runs[r] for r in self.rec.used_by] if srv.visible(proj.entity, proj.name) else []
        return _page(runs, first, after, lambda r: _RunView(proj, r))

    def artifactMemberships(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        items = _srv(info).memberships(self.rec)
        return _page(items, first, after, lambda ci: _MembershipView(ci[0], ci[1], self.rec))


class _RunView:
    def __init__(self, proj: _Project, run: _Run) -> None:
        self.p = proj
        self.r = run
        self.id = run.id
        self.name = run.name
        self.displayName = run.display_name or run.name
        self.projectId = str(proj.number)
        self.project = _ProjectView(proj)
        self.state = run.state
        self.tags: list[str] = []
        # W&B keeps each config key as {"value": ..., "desc": ...}
        self.config = json.dumps({k: {"value": v, "desc": None} for k, v in run.config.items()})
        self.summaryMetrics = "{}"
        self.systemMetrics = "{}"
        self.group = None
        self.jobType = run.job_type
        self.commit = None
        self.readOnly = False
        self.createdAt = _iso(run.created_at)
        self.heartbeatAt = _iso(run.created_at)
        self.description = None
        self.notes = None
        self.sweepName = None
        self.historyLineCount = 0
        self.historyKeys = json.dumps({"keys": {}, "lastStep": 0})
        self.user = {"name": "Test User", "username": proj.entity}

    def _artifacts(
        self, pred: Callable[[ArtifactRecord], bool], first: int | None, after: str | None
    ) -> dict[str, Any]:
        recs = [r for c in self.p.collections.values() if c.kind == SEQUENCE for r in c.live() if pred(r)]
        return _page(recs, first, after, _ArtifactView, lambda r: {"version": r.version})

    def inputArtifacts(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        return self._artifacts(lambda r: self.name in r.used_by, first, after)

    def outputArtifacts(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        return self._artifacts(lambda r: r.run == self.name, first, after)


def _resolve_collection_type(value: Any, info: Info, abstract: Any) -> str:
    return (
        "ArtifactPortfolio" if isinstance(value, _CollectionView) and value.c.kind == PORTFOLIO else "ArtifactSequence"
    )


def _resolve_creator_type(value: Any, info: Info, abstract: Any) -> str:
    return "Run" if isinstance(value, _RunView) else "User"


def build_schema(omit_fields: Sequence[str] = ()) -> graphql.GraphQLSchema:
    """The executable schema, without the fields named in ``omit_fields`` (``"Type.field"``; a
    field dropped from an interface is dropped from its implementations too), to play an older
    server that lacks them."""
    document = graphql.parse(SCHEMA_SDL)
    drop: dict[str, set[str]] = {}
    for item in omit_fields:
        type_name, _, field_name = item.partition(".")
        drop.setdefault(type_name, set()).add(field_name)
    for node in document.definitions:
        if isinstance(node, graphql.ObjectTypeDefinitionNode):
            for iface in node.interfaces or ():
                drop.setdefault(node.name.value, set()).update(drop.get(iface.name.value, ()))
    definitions = []
    for node in document.definitions:
        if isinstance(node, graphql.ObjectTypeDefinitionNode | graphql.InterfaceTypeDefinitionNode):
            gone = drop.pop(node.name.value, set())
            fields = tuple(f for f in node.fields or () if f.name.value not in gone)
            if len(fields) != len(node.fields or ()) - len(gone):
                raise ValueError(f"omit_fields: {node.name.value} lacks some of {sorted(gone)}")
            node = dataclasses.replace(node, fields=fields)
        definitions.append(node)
    if drop:
        raise ValueError(f"omit_fields: unknown types {sorted(drop)}")
    schema = graphql.build_ast_schema(dataclasses.replace(document, definitions=tuple(definitions)))
    coll = schema.type_map["ArtifactCollection"]
    creator = schema.type_map["ArtifactCreator"]
    assert isinstance(coll, graphql.GraphQLInterfaceType) and isinstance(creator, graphql.GraphQLUnionType)
    coll.resolve_type = _resolve_collection_type
    creator.resolve_type = _resolve_creator_type
    return schema


SCHEMA = build_schema()


# ----------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the SDK opens up to 32 connections at once
    owner: WandbServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler crashed: keep it for the test to see (a client hanging up is no bug)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        log.warning("wandb test server: handler failed: %r", exc)
        with self.owner._lock:
            self.owner.handler_errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("wandb test server: " + format, *args)

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        req = Request("POST", self.path, authorized=self._authorized())
        owner._record(req)
        if urllib.parse.urlsplit(self.path).path.rstrip("/") != "/graphql":
            self._send_json(req, 404, {"errors": [{"message": "not found"}]})
            return
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            req.query = str(payload.get("query") or "")
            req.variables = dict(payload.get("variables") or {})
            req.operation = payload.get("operationName") or _operation_name(req.query)
        except (ValueError, TypeError) as exc:
            self._send_json(req, 400, {"errors": [{"message": f"bad request body: {exc}"}]})
            return
        fault = owner.faults.take(("graphql_status",), req.operation or "")
        if "graphql_status" in fault:
            code, retry_after = fault["graphql_status"]
            headers = _retry_after(retry_after)
            self._send_json(req, code, {"errors": [{"message": f"injected {code}"}]}, headers)
            return
        if owner.faults.wrong_key or not req.authorized:
            self._send_json(req, 401, {"errors": [{"message": "user is not logged in"}]})
            return
        status, result = owner._execute(req)
        self._send_json(req, status, result)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, cred = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(cred).decode().partition(":")
        except ValueError:
            return False
        good = self.server.owner.api_key.encode()
        return hmac.compare_digest(password.encode(), good) and user in ("api", "")

    def _send_json(self, req: Request, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        req.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        owner = self.server.owner
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        req = Request(
            "HEAD" if head else "GET", self.path, range=self.headers.get("Range"), authorized=self._authorized()
        )
        owner._record(req)
        parts = [p for p in split.path.split("/") if p]
        key: str | None = None
        if len(parts) >= 3 and parts[0] == "files":
            query = urllib.parse.parse_qs(split.query)
            expires = (query.get("expires") or [""])[0]
            sig = (query.get("sig") or [""])[0]
            if not owner._signature_ok(split.path, expires, sig):
                self._send_plain(req, 403, _S3_DENIED.format(msg="SignatureDoesNotMatch"), "application/xml")
                return
            if float(expires) < time.time():
                self._send_plain(req, 403, _S3_DENIED.format(msg="Request has expired"), "application/xml")
                return
            key = parts[1]
        elif (len(parts) >= 4 and parts[0] == "artifactsV2") or (len(parts) == 3 and parts[0] == "artifacts"):
            if not req.authorized:
                self._send_plain(req, 401, "unauthorized", "text/plain")
                return
            if parts[0] == "artifacts":
                key = parts[2]
            else:  # the digest is the 32-hex segment after the ids; the name may have slashes
                key = next((p for p in parts[5:] if re.fullmatch(r"[0-9a-f]{32}", p)), None)
            if parts[2 if parts[0] == "artifactsV2" else 1] not in owner._entities():
                key = None
        blob = owner._blobs.get(key) if key else None
        if blob is None:
            self._send_plain(req, 404, "not found", "text/plain")
            return
        self._serve_blob(req, path, blob, head)

    def _send_plain(
        self, req: Request, status: int, text: str, ctype: str, headers: Mapping[str, str] | None = None
    ) -> None:
        data = text.encode()
        req.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if req.method != "HEAD":
            self.wfile.write(data)

    def _serve_blob(self, req: Request, path: str, blob: bytes, head: bool) -> None:
        # Faults in stages, so a rule is used up only by a request it changed: a slow start
        # combines with anything; a status wins over an expiry; body faults only meet a body.
        faults = self.server.owner.faults
        slow = faults.take(("slow_first_byte",), path)
        if slow:
            time.sleep(slow["slow_first_byte"])
        terminal = faults.take(("status",), path) or faults.take(("expire",), path)
        if "status" in terminal:
            code, retry_after = terminal["status"]
            self._send_plain(req, code, f"injected {code}", "text/plain", _retry_after(retry_after))
            return
        if "expire" in terminal:
            self._send_plain(req, 403, _S3_DENIED.format(msg="Request has expired"), "application/xml")
            return
        etag = '"' + hashlib.md5(blob, usedforsecurity=False).hexdigest() + '"'
        start, end = 0, len(blob)
        status = 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range == etag):
            parsed = _parse_range(rng, len(blob))
            if parsed is None:
                self._send_plain(
                    req, 416, "range not satisfiable", "text/plain", {"Content-Range": f"bytes */{len(blob)}"}
                )
                return
            start, end = parsed
            status = 206
        body = blob[start:end]
        fault = {} if head or not body else faults.take(_BODY_FAULTS, path)
        if "corrupt" in fault:
            mid = len(body) // 2
            body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
        req.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(blob)}")
        self.end_headers()
        if head:
            return
        limit = len(body)
        if "reset_after" in fault:
            limit = min(limit, fault["reset_after"])
        if "truncate_after" in fault:
            limit = min(limit, fault["truncate_after"])
        rate = fault.get("slow_body")
        try:
            self._write_body(body[:limit], rate)
            if "reset_after" in fault:
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
        except OSError:  # the client went away: nothing to tell it
            self.close_connection = True

    def _write_body(self, body: bytes, rate: float | None) -> None:
        if rate is None:
            self.wfile.write(body)
            return
        chunk = max(1, int(rate / 10))
        for i in range(0, len(body), chunk):
            self.wfile.write(body[i : i + chunk])
            self.wfile.flush()
            time.sleep(len(body[i : i + chunk]) / rate)


_S3_DENIED = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>{msg}</Message></Error>'
_OPNAME = re.compile(r"\b(?:query|mutation|subscription)\s+([A-Za-z_][A-Za-z0-9_]*)")


def _retry_after(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"Retry-After": str(int(seconds)) if float(seconds).is_integer() else str(seconds)}


def _operation_name(query: str) -> str | None:
    match = _OPNAME.search(query)
    return match.group(1) if match else None


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` as ``(start, end)`` (end exclusive), or None."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return None
    if not match.group(1):
        n = int(match.group(2))
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(match.group(1))
    end = int(match.group(2)) + 1 if match.group(2) else size
    end = min(end, size)
    return (start, end) if start < end else None


# ----------------------------------------------------------------------------- the server


class WandbServer:
    """See the module docstring.  Use as a context manager (or call ``start``/``stop``)."""

    def __init__(
        self,
        *,
        api_key: str = "k" * 40,
        viewer_entity: str = "acme",
        teams: Sequence[str] = (),
        url_ttl: float = 3600.0,
        features: Mapping[str, bool] | None = None,
        omit_fields: Sequence[str] = (),
    ) -> None:
        self.schema = SCHEMA if not omit_fields else build_schema(omit_fields)
        self.api_key = api_key
        self.viewer_entity = viewer_entity
        self.teams = list(teams)
        self.url_ttl = url_ttl
        self.features = dict(DEFAULT_FEATURES if features is None else features)
        self.validation_status = 400
        self.faults = Faults()
        self.requests: list[Request] = []
        self.graphql_errors: list[str] = []
        self.handler_errors: list[str] = []  # tracebacks of handler crashes (server bugs)
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._counter = 0
        self._projects: dict[tuple[str, str], _Project] = {}
        self._collections_by_id: dict[str, _Collection] = {}
        self._by_id: dict[str, ArtifactRecord] = {}
        self._blobs: dict[str, bytes] = {}
        self._read_only: set[tuple[str, str]] = set()
        self._hidden: set[tuple[str, str]] = set()
        self._orgs: dict[str, _Org] = {}  # display name -> organization
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle

    def start(self) -> WandbServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="wandb-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WandbServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- data

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _entities(self) -> set[str]:
        orgs = (o.entity for o in self._orgs.values())
        return {self.viewer_entity, *self.teams, *orgs, *(e for e, _ in self._projects)}

    def add_organization(self, name: str, entity: str, *, teams: Sequence[str] = (), member: bool = True) -> None:
        """An organization with display name ``name`` and its own entity ``entity``; ``teams``
        belong to it; the viewer is a member unless ``member`` is False (then the server
        answers as if it did not exist)."""
        with self._lock:
            self._orgs[name] = _Org(_gid("Organization", self._next()), name, entity, list(teams), member)

    def add_registry(self, org_entity: str, name: str) -> str:
        """The registry ``name`` (spaces and capitals allowed) of the organization whose entity is
        ``org_entity``: the project ``wandb-registry-<name>`` there.  Returns the project name."""
        with self._lock:
            if self._org_of_entity(org_entity, own=True) is None:
                raise KeyError(f"no organization has the entity {org_entity!r}")
            project = REGISTRY_PREFIX + name
            self._project(org_entity, project)
            return project

    def hide_project(self, entity: str, project: str, hidden: bool = True) -> None:
        """Make ``entity/project`` invisible to the viewer: it is not found or listed, and where
        one of its artifacts shows through a link (a registry member) the artifact's sequence has
        no project and its runs are not told; the artifact itself and its files still are."""
        with self._lock:
            self._project(entity, project)
            (self._hidden.add if hidden else self._hidden.discard)((entity, project))

    def visible(self, entity: str, project: str) -> bool:
        return (entity, project) not in self._hidden

    def _org_of_entity(self, entity: str, *, own: bool = False) -> _Org | None:
        """The organization whose own entity ``entity`` is (or, unless ``own``, a team of)."""
        for org in self._orgs.values():
            if org.member and (entity == org.entity or (not own and entity in org.teams)):
                return org
        return None

    def add_team(self, name: str) -> None:
        with self._lock:
            if name not in self.teams:
                self.teams.append(name)

    def _project(self, entity: str, project: str) -> _Project:
        proj = self._projects.get((entity, project))
        if proj is None:
            n = self._next()
            proj = _Project(_gid("Project", n), n, entity, project, _EPOCH + n)
            self._projects[(entity, project)] = proj
        return proj

    def add_run(
        self,
        entity: str,
        project: str,
        run: str,
        *,
        display_name: str | None = None,
        job_type: str | None = None,
        state: str = "finished",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """A run ``run`` (its id: W&B's ``Run.name``) in ``entity/project``; an existing one keeps
        what it has unless a keyword is given."""
        with self._lock:
            proj = self._project(entity, project)
            known = proj.runs.get(run)
            if known is None:
                n = self._next()
                known = proj.runs[run] = _Run(
                    _gid("Run", f"v1:{run}:{project}:{entity}"), run, entity, project, _EPOCH + n, display_name=run
                )
            if display_name is not None:
                known.display_name = display_name
            if job_type is not None:
                known.job_type = job_type
            if state != "finished" or known.state == "finished":
                known.state = state
            if config is not None:
                known.config = dict(config)

    def set_read_only(self, entity: str, project: str, read_only: bool = True) -> None:
        """Make mutations of ``entity/project`` (edits, aliases, deletes, links into it) fail
        with "permission denied", as for a project the viewer may only read.  Mutations of an
        entity that is neither the viewer's nor one of its teams fail the same way."""
        with self._lock:
            self._project(entity, project)
            (self._read_only.add if read_only else self._read_only.discard)((entity, project))

    def can_write(self, entity: str, project: str) -> bool:
        orgs = (o.entity for o in self._orgs.values() if o.member)
        return entity in (self.viewer_entity, *self.teams, *orgs) and (entity, project) not in self._read_only

    def add_artifact(
        self,
        entity: str,
        project: str,
        name: str,
        type: str,
        files: Mapping[str, bytes],
        *,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        description: str = "",
        digest_algorithm: str = MD5,
        references: Mapping[str, dict[str, Any]] | None = None,
        manifest: dict[str, Any] | None = None,
        run: str | None = None,
        used_by: Sequence[str] = (),
    ) -> ArtifactRecord:
        """A new version ``vN`` of ``entity/project/name``; ``latest`` and ``aliases`` move to it.

        ``run`` names the run that logged it (default: a run ``<name>-run-<n>`` is made up, so
        ``logged_by()`` has something to find); ``used_by`` names runs that used it.
        ``manifest`` replaces the generated manifest JSON verbatim (hostile-manifest tests); the
        files stay downloadable by their own content.  ``references``: path -> manifest entry
        (``ref``, ``digest``, ``size``, ``extra``), listed in the manifest but not as files.
        """
        if digest_algorithm not in (MD5, XXH128):
            raise ValueError(f"digest_algorithm must be MD5 or XXH128, not {digest_algorithm!r}")
        with self._lock:
            proj = self._project(entity, project)
            if type not in proj.types:
                n = self._next()
                proj.types[type] = _Type(_gid("ArtifactType", n), type, _EPOCH + n)
            coll = proj.collections.get(name)
            if coll is None:
                n = self._next()
                coll = _Collection(_gid("ArtifactSequence", n), n, entity, project, name, type, _EPOCH + n)
                proj.collections[name] = coll
                self._collections_by_id[coll.id] = coll
            elif coll.type != type:
                raise ValueError(f"collection {name!r} has type {coll.type!r}, not {type!r}")
            number = self._next()
            art_id = _gid("Artifact", number)
            index = coll.next_index
            coll.next_index += 1
            previous = coll.versions.get(index - 1) if index > 0 else None
            contents: dict[str, dict[str, Any]] = {}
            file_digests: dict[str, str] = {}
            for path, data in files.items():
                digest = digest_bytes(data, digest_algorithm)
                file_digests[path] = digest
                self._blobs[hex_from_b64(digest)] = bytes(data)
                birth = art_id
                if previous is not None and previous.file_digests.get(path) == digest:
                    prev_entry = previous.manifest.get("contents", {}).get(path, {})
                    birth = prev_entry.get("birthArtifactID", previous.id)
                entry: dict[str, Any] = {"digest": digest, "birthArtifactID": birth, "size": len(data)}
                if digest_algorithm == XXH128:
                    entry["extra"] = {"alg": XXH128}
                contents[path] = entry
            for path, ref_entry in (references or {}).items():
                contents[path] = dict(ref_entry)
            generated = {
                "version": 1,
                "storagePolicy": "wandb-storage-policy-v1",
                "storagePolicyConfig": {"storageLayout": "V2"},
                "contents": dict(sorted(contents.items())),
            }
            served = generated if manifest is None else manifest
            manifest_bytes = json.dumps(served, ensure_ascii=False).encode()
            self._blobs[hashlib.md5(manifest_bytes, usedforsecurity=False).hexdigest()] = manifest_bytes
            digest_items = _digest_items(served)
            art_digest = artifact_digest(digest_items, digest_algorithm)
            if run is None:
                run = f"{name}-run-{number}"
            for r in (run, *used_by):
                self.add_run(entity, project, r)
            rec = ArtifactRecord(
                id=art_id,
                number=number,
                entity=entity,
                project=project,
                name=name,
                type=type,
                version_index=index,
                digest=art_digest,
                digest_algorithm=digest_algorithm,
                manifest=served,
                manifest_bytes=manifest_bytes,
                files={p: bytes(b) for p, b in files.items()},
                metadata=dict(metadata or {}),
                description=description,
                created_at=_EPOCH + number,
                membership_id=_gid("ArtifactCollectionMembership", number),
                collection_id=coll.id,
                run=run,
                used_by=list(used_by),
                file_digests=file_digests,
                _collection=coll,
            )
            coll.versions[index] = rec
            self._by_id[art_id] = rec
            coll.aliases["latest"] = index
            for alias in aliases:
                coll.aliases[alias] = index
            return rec

    def artifact(self, entity: str, project: str, name: str, version_index: int) -> ArtifactRecord:
        with self._lock:
            return self._projects[(entity, project)].collections[name].versions[version_index]

    def collection(self, entity: str, project: str, name: str) -> _Collection:
        with self._lock:
            return self._projects[(entity, project)].collections[name]

    def set_alias(self, entity: str, project: str, name: str, alias: str, version_index: int) -> None:
        """Point ``alias`` at version ``version_index`` (moving it from wherever it was)."""
        with self._lock:
            coll = self._projects[(entity, project)].collections[name]
            if version_index not in coll.versions or coll.versions[version_index].deleted:
                raise KeyError(f"{name}:v{version_index}")
            coll.aliases[alias] = version_index

    def delete_version(self, entity: str, project: str, name: str, version_index: int) -> None:
        """Soft-delete a version: it disappears from listings and lookups, its links too; its
        aliases go away, and ``latest`` moves to the newest live version (of each collection)."""
        with self._lock:
            self._soft_delete(self._projects[(entity, project)].collections[name].versions[version_index])

    def _soft_delete(self, rec: ArtifactRecord) -> None:
        rec.deleted = True
        rec.updated_at = self._now()
        for coll, index in self.memberships(rec, live=False):
            coll.aliases = {a: i for a, i in coll.aliases.items() if i != index}
            coll.move_latest()

    def memberships(self, rec: ArtifactRecord, *, live: bool = True) -> list[tuple[_Collection, int]]:
        """Every collection ``rec`` is in (its own sequence first, then the portfolios it is
        linked into), with its index there."""
        with self._lock:
            if live and rec.deleted:
                return []
            assert rec._collection is not None
            out = [(rec._collection, rec.version_index)]
            for coll in self._collections_by_id.values():
                if coll.kind == PORTFOLIO:
                    index = coll.index_of(rec)
                    if index is not None:
                        out.append((coll, index))
            return out

    def link(
        self, rec: ArtifactRecord, entity: str, project: str, portfolio: str, aliases: Sequence[str] = ()
    ) -> tuple[_Collection, int]:
        """Link ``rec`` into the portfolio ``entity/project/portfolio`` (made on first use, with
        ``rec``'s type); ``latest`` and ``aliases`` move to it.  Linking a version that is
        already there keeps its index.  What ``linkArtifact`` does, without the permission
        check; ValueError for a name that is a sequence or a portfolio of another type."""
        with self._lock:
            proj = self._project(entity, project)
            coll = proj.collections.get(portfolio)
            if coll is None:
                n = self._next()
                if rec.type not in proj.types:
                    proj.types[rec.type] = _Type(_gid("ArtifactType", n), rec.type, _EPOCH + n)
                coll = _Collection(
                    _gid("ArtifactPortfolio", n), n, entity, project, portfolio, rec.type, self._now(), kind=PORTFOLIO
                )
                proj.collections[portfolio] = coll
                self._collections_by_id[coll.id] = coll
            elif coll.kind != PORTFOLIO:
                raise ValueError(
                    f"artifact collection {portfolio!r} already exists as a sequence: only portfolios take links"
                )
            elif coll.type != rec.type:
                raise ValueError(
                    f"artifact type {rec.type!r} does not match the type {coll.type!r} of collection {portfolio!r}"
                )
            index = coll.index_of(rec)
            if index is None:
                index = coll.next_index
                coll.next_index += 1
                coll.versions[index] = rec
                coll.linked_at[index] = self._now()
                coll.aliases[LATEST] = index
            for alias in aliases:
                coll.aliases[alias] = index
            rec.updated_at = self._now()
            return coll, index

    def _now(self) -> float:
        """A time after every stored one (the epoch-based clock every record uses)."""
        return _EPOCH + self._next()

    # -- URLs

    def sign(self, path: str, ttl: float | None = None) -> str:
        """``path?expires=..&sig=..`` for a ``/files/...`` path (already percent-encoded)."""
        expires = f"{time.time() + (self.url_ttl if ttl is None else ttl):.3f}"
        sig = hmac.new(self._secret, f"{path}\n{expires}".encode(), "sha256").hexdigest()
        return f"{path}?expires={expires}&sig={sig}"

    def _signature_ok(self, path: str, expires: str, sig: str) -> bool:
        try:
            float(expires)
        except ValueError:
            return False
        good = hmac.new(self._secret, f"{path}\n{expires}".encode(), "sha256").hexdigest()
        return hmac.compare_digest(good, sig)

    def _file_node(self, rec: ArtifactRecord, path: str) -> dict[str, Any]:
        digest = rec.file_digests[path]
        hexkey = hex_from_b64(digest)
        url = self.url + self.sign(f"/files/{hexkey}/{urllib.parse.quote(path)}")
        data = rec.files[path]
        return {
            "id": _gid("File", f"{rec.number}:{path}"),
            "name": path,
            "displayName": path,
            "url": url,
            "directUrl": url,
            "sizeBytes": len(data),
            "storagePath": f"wandb_artifacts/{rec.number}/{hexkey}",
            "mimetype": "application/octet-stream",
            "updatedAt": _iso(rec.created_at),
            "digest": digest,
            "md5": digest_bytes(data, MD5),
        }

    def _viewer(self) -> dict[str, Any]:
        return {
            "id": _gid("User", self.viewer_entity),
            "name": "Test User",
            "username": self.viewer_entity,
            "email": f"{self.viewer_entity}@example.com",
            "admin": False,
            "flags": "{}",
            "entity": self.viewer_entity,
            "deletedAt": None,
            "apiKeys": _page([], None, None),
            "teams": lambda info, first=None, after=None: _page([_EntityView(t) for t in self.teams], first, after),
            "organizations": [o.view() for o in self._orgs.values() if o.member],
        }

    # -- requests

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _execute(self, req: Request) -> tuple[int, dict[str, Any]]:
        try:
            document = graphql.parse(req.query)
        except GraphQLError as exc:
            self.graphql_errors.append(exc.message)
            return 400, {"errors": [exc.formatted]}
        errors = graphql.validate(self.schema, document)
        if errors:
            formatted = []
            for err in errors:
                # graphql-js (and W&B's server) quote names with double quotes; clients match the text
                message = re.sub(r"'([A-Za-z_][A-Za-z0-9_!\[\]]*)'", r'"\1"', err.message)
                self.graphql_errors.append(f"{req.operation}: {message}")
                log.warning("wandb test server: %s: %s", req.operation, message)
                formatted.append({**err.formatted, "message": message})
            return self.validation_status, {"errors": formatted}
        names = {
            d.name.value for d in document.definitions if isinstance(d, graphql.OperationDefinitionNode) and d.name
        }
        with self._lock:
            result = graphql.execute(
                self.schema,
                document,
                root_value=_Root(),
                context_value=self,
                variable_values=req.variables,
                operation_name=req.operation if req.operation in names else None,
            )
        if not isinstance(result, graphql.ExecutionResult):  # no resolver here is async
            raise TypeError("asynchronous execution result")
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
            for err in result.errors:
                self.graphql_errors.append(f"{req.operation}: {err.message}")
                log.warning("wandb test server: %s: %s", req.operation, err.message)
        return 200, out

    def operations(self, name: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.operation == name]

    def graphql_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def file_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method in ("GET", "HEAD")]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.graphql_errors.clear()


def _digest_items(manifest: Any) -> list[tuple[str, str]]:
    contents = manifest.get("contents") if isinstance(manifest, dict) else None
    if not isinstance(contents, dict):
        return []
    return [(str(p), str(e.get("digest"))) for p, e in contents.items() if isinstance(e, dict)]
