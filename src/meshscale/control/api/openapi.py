"""The OpenAPI 3.0 document of /api/v1, built from the route table."""

from __future__ import annotations

import re
from typing import Any

from meshscale.control.api.table import ROUTES

_TS: dict[str, Any] = {"type": "string", "format": "date-time", "nullable": True}
_STRS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_FIELD_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
    "timestamp": _TS,
    "strings": _STRS,
    "integer": {"type": "integer"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props}


_ID = {"type": "string", "format": "uint64"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        }
    ),
    "Empty": _obj({}),
    "Health": _obj({"databaseConnectivity": {"type": "boolean"}}),
    "User": _obj(
        {
            "id": _ID,
            "name": {"type": "string"},
            "createdAt": _TS,
            "displayName": {"type": "string"},
            "email": {"type": "string"},
            "providerId": {"type": "string"},
            "provider": {"type": "string"},
            "profilePicUrl": {"type": "string"},
            "tailnetId": _ID,
        }
    ),
    "PreAuthKey": _obj(
        {
            "user": {**_ref("User"), "nullable": True},
            "id": _ID,
            "key": {"type": "string"},
            "reusable": {"type": "boolean"},
            "ephemeral": {"type": "boolean"},
            "used": {"type": "boolean"},
            "expiration": _TS,
            "createdAt": _TS,
            "aclTags": _STRS,
        }
    ),
    "ApiKey": _obj(
        {
            "id": _ID,
            "prefix": {"type": "string"},
            "expiration": _TS,
            "createdAt": _TS,
            "lastSeen": _TS,
            "tailnetId": {**_ID, "nullable": True},  # null: a server admin key
        }
    ),
    "Node": _obj(
        {
            "id": _ID,
            "machineKey": {"type": "string"},
            "nodeKey": {"type": "string"},
            "discoKey": {"type": "string"},
            "ipAddresses": _STRS,
            "name": {"type": "string"},
            "user": {**_ref("User"), "nullable": True},
            "lastSeen": _TS,
            "expiry": _TS,
            "preAuthKey": {**_ref("PreAuthKey"), "nullable": True},
            "createdAt": _TS,
            "registerMethod": {
                "type": "string",
                "enum": [
                    "REGISTER_METHOD_UNSPECIFIED",
                    "REGISTER_METHOD_AUTH_KEY",
                    "REGISTER_METHOD_CLI",
                    "REGISTER_METHOD_OIDC",
                ],
            },
            "givenName": {"type": "string"},
            "online": {"type": "boolean"},
            "approvedRoutes": _STRS,
            "availableRoutes": _STRS,
            "subnetRoutes": _STRS,
            "tags": _STRS,
            "ephemeral": {"type": "boolean"},
        }
    ),
    "Registration": _obj(
        {
            "id": {"type": "string"},
            "nodeKey": {"type": "string"},
            "machineKey": {"type": "string"},
            "hostname": {"type": "string"},
            "expiration": _TS,
        }
    ),
    "UserOne": _obj({"user": _ref("User")}),
    "UserList": _obj({"users": {"type": "array", "items": _ref("User")}}),
    "NodeOne": _obj({"node": _ref("Node")}),
    "NodeList": _obj({"nodes": {"type": "array", "items": _ref("Node")}}),
    "BackfillNodeIPs": _obj({"changes": _STRS}),
    "RegistrationList": _obj({"registrations": {"type": "array", "items": _ref("Registration")}}),
    "PreAuthKeyOne": _obj({"preAuthKey": _ref("PreAuthKey")}),
    "PreAuthKeyList": _obj({"preAuthKeys": {"type": "array", "items": _ref("PreAuthKey")}}),
    "ApiKeyCreated": _obj({"apiKey": {"type": "string"}}),
    "ApiKeyList": _obj({"apiKeys": {"type": "array", "items": _ref("ApiKey")}}),
    "Policy": _obj(
        {
            "policy": {"type": "string"},
            "updatedAt": _TS,
            "version": {"type": "integer", "nullable": True},
        }
    ),
    "PolicyVersion": _obj(
        {
            "version": {"type": "integer"},
            "policy": {"type": "string"},
            "updatedAt": _TS,
            "source": {"type": "string"},
        }
    ),
    "PolicyHistory": _obj({"versions": {"type": "array", "items": _ref("PolicyVersion")}}),
    "PolicyCheckError": _obj(
        {
            "message": {"type": "string"},
            "line": {"type": "integer", "nullable": True},
            "column": {"type": "integer", "nullable": True},
        }
    ),
    "PolicyCheck": _obj(
        {
            "valid": {"type": "boolean"},
            "errors": {"type": "array", "items": _ref("PolicyCheckError")},
            "warnings": _STRS,
        }
    ),
    "AuditEntry": _obj(
        {
            "id": _ID,
            "at": _TS,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "detail": {"type": "object"},
            "source": {"type": "string"},
        }
    ),
    "Reach": _obj(
        {
            "allowed": {"type": "boolean"},
            "src": {"type": "string"},
            "dst": {"type": "string"},
            "port": {"type": "integer"},
            "proto": {"type": "string"},
        }
    ),
    "AuditList": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")}}),
    "Share": _obj(
        {"nodeId": _ID, "node": {"type": "string"}, "user": _ref("User"), "createdAt": _TS}
    ),
    "ShareOne": _obj({"share": _ref("Share")}),
    "ShareList": _obj({"shares": {"type": "array", "items": _ref("Share")}}),
    "Tailnet": _obj(
        {
            "id": _ID,
            "name": {"type": "string"},
            "baseDomain": {"type": "string"},
            "createdAt": _TS,
            "users": {"type": "integer"},
            "nodes": {"type": "integer"},
        }
    ),
    "TailnetOne": _obj({"tailnet": _ref("Tailnet")}),
    "TailnetList": _obj({"tailnets": {"type": "array", "items": _ref("Tailnet")}}),
}

_ERRORS = {
    "400": "Bad request",
    "401": "Missing or invalid API key",
    "403": "Not allowed for a tailnet-scoped API key",
    "404": "Not found",
    "409": "Conflict",
}


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        responses: dict[str, Any] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": _ref(route.response)}},
            },
        }
        for code, text in _ERRORS.items():
            responses[code] = {
                "description": text,
                "content": {"application/json": {"schema": _ref("Error")}},
            }
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": params,
            "responses": responses,
        }
        if route.body:
            op["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": _obj({k: _FIELD_TYPES[v] for k, v in route.body.items()})
                    }
                },
            }
        if route.public:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "meshscale-control API",
            "version": version,
            "description": "Headscale-compatible /api/v1 REST API.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
