// A second, independent SCIM 2.0 service provider for provisiond's tests.
//
// SCIMMY parses, validates and formats every request and response, applies
// PATCH operations and filters; scimmy-routers supplies the HTTP endpoints.
// This file only holds Users and Groups in memory, the way an application
// built on SCIMMY would hold them in its database:
//
//   SCIMMY_TOKEN=secret node server.js [--port 0] [--host 127.0.0.1]
//                       [--extension URN=attr1,attr2 ...]
//
// It serves SCIM under /scim/v2 and prints one line when it listens:
//   scimmy-peer ready http://127.0.0.1:<port>/scim/v2
// Every request must carry "Authorization: Bearer $SCIMMY_TOKEN".
// --extension declares one more User schema extension with string attributes.
// SIGTERM or SIGINT stop it.

import crypto from "node:crypto";
import express from "express";
import SCIMMY from "scimmy";
import SCIMMYRouters from "scimmy-routers";

const MOUNT = "/scim/v2";

function fail(message) {
    process.stderr.write(`scimmy-peer: ${message}\n`);
    process.exit(2);
}

function parseArgs(argv) {
    const options = {port: process.env.SCIMMY_PORT ?? "0", host: "127.0.0.1", extensions: []};
    for (let i = 0; i < argv.length; i++) {
        const [flag, inline] = argv[i].split(/=(.*)/s, 2);
        const value = () => inline ?? argv[++i] ?? fail(`${flag} needs a value`);
        if (flag === "--port") options.port = value();
        else if (flag === "--host") options.host = value();
        else if (flag === "--extension") options.extensions.push(value());
        else fail(`unknown argument ${argv[i]}`);
    }
    if (!/^\d+$/.test(options.port) || Number(options.port) > 65535) fail(`--port ${options.port} is not a port`);
    return options;
}

const options = parseArgs(process.argv.slice(2));
const token = process.env.SCIMMY_TOKEN ?? "";
if (token.length < 8) fail("SCIMMY_TOKEN must hold the bearer token to accept (8 characters or more)");

// -- schemas -------------------------------------------------------------------

SCIMMY.Resources.declare(SCIMMY.Resources.User).extend(SCIMMY.Schemas.EnterpriseUser, false);
for (const spec of options.extensions) {
    const [urn, attrs = ""] = spec.split("=", 2);
    const names = attrs.split(",").filter(Boolean);
    if (!urn.startsWith("urn:") || names.length === 0) fail(`--extension ${spec}: expected URN=attr1,attr2`);
    const name = urn.split(":").at(-2) ?? "Extension";
    const definition = new SCIMMY.Types.SchemaDefinition(name, urn, `${name} extension`,
        names.map((n) => new SCIMMY.Types.Attribute("string", n)));
    SCIMMY.Resources.User.extend(definition, false);
}
SCIMMY.Resources.declare(SCIMMY.Resources.Group);

// -- storage -------------------------------------------------------------------

const users = new Map();   // id -> stored user (plain JSON)
const groups = new Map();  // id -> stored group (plain JSON)

const plain = (instance) => JSON.parse(JSON.stringify(instance));
const notFound = (kind, id) => new SCIMMY.Types.Error(404, null, `${kind} ${id} not found`);

function stamp(record, previous) {
    const now = new Date().toISOString();
    record.meta = {created: previous?.meta?.created ?? now, lastModified: now};
    return record;
}

function list(store, resource) {
    const all = [...store.values()];
    return resource.filter ? resource.filter.match(all) : all;
}

function read(store, kind, resource) {
    if (!resource.id) return list(store, resource);
    const record = store.get(resource.id);
    if (!record) throw notFound(kind, resource.id);
    return record;
}

function remove(store, kind, resource) {
    if (!store.delete(resource.id)) throw notFound(kind, resource.id);
}

// userName is unique across the service provider, compared case-insensitively
// (RFC 7643 §4.1.1: caseExact false, uniqueness server).
function claimUserName(userName, id) {
    const wanted = String(userName).toLowerCase();
    for (const [other, user] of users) {
        if (other !== id && String(user.userName).toLowerCase() === wanted) {
            throw new SCIMMY.Types.Error(409, "uniqueness", `userName ${userName} is already taken`);
        }
    }
}

SCIMMY.Resources.User
    .ingress((resource, instance) => {
        const previous = resource.id ? users.get(resource.id) : undefined;
        if (resource.id && !previous) throw notFound("User", resource.id);
        claimUserName(instance.userName, resource.id);
        const id = resource.id ?? crypto.randomUUID();
        const record = stamp({...plain(instance), id}, previous);
        users.set(id, record);
        return record;
    })
    .egress((resource) => read(users, "User", resource))
    .degress((resource) => {
        remove(users, "User", resource);
        // A deleted user leaves every group it was in.
        for (const group of groups.values()) {
            const kept = (group.members ?? []).filter((m) => m.value !== resource.id);
            if (kept.length !== (group.members ?? []).length) stamp(Object.assign(group, {members: kept}), group);
        }
    });

// Membership is a set, as in a membership table with a unique key: SCIMMY's
// PATCH "add" appends a member that is already there, and the copy is dropped here.
function checkMembers(members) {
    const seen = new Map();
    for (const member of members ?? []) {
        if (!users.has(member.value) && !groups.has(member.value)) {
            throw new SCIMMY.Types.Error(400, "invalidValue", `no user or group with id ${member.value}`);
        }
        if (!seen.has(member.value)) seen.set(member.value, member);
    }
    return members === undefined ? undefined : [...seen.values()];
}

SCIMMY.Resources.Group
    .ingress((resource, instance) => {
        const previous = resource.id ? groups.get(resource.id) : undefined;
        if (resource.id && !previous) throw notFound("Group", resource.id);
        const record = plain(instance);
        if (record.members) record.members = checkMembers(record.members);
        const id = resource.id ?? crypto.randomUUID();
        const stored = stamp({...record, id}, previous);
        groups.set(id, stored);
        return stored;
    })
    .egress((resource) => read(groups, "Group", resource))
    .degress((resource) => remove(groups, "Group", resource));

// -- HTTP ----------------------------------------------------------------------

function sameToken(given) {
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    return a.length === b.length && crypto.timingSafeEqual(a, b);
}

const app = express();
app.disable("x-powered-by");
app.use(MOUNT, new SCIMMYRouters({
    type: "bearer",
    handler: (request) => {
        const header = request.header("Authorization") ?? "";
        if (!header.startsWith("Bearer ") || !sameToken(header.slice(7))) {
            throw new Error("bearer token missing or refused");
        }
        return "provisioning-client";
    },
}));

const server = app.listen(Number(options.port), options.host, () => {
    const {address, port} = server.address();
    process.stdout.write(`scimmy-peer ready http://${address}:${port}${MOUNT}\n`);
});
server.on("error", (error) => fail(error.message));

for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
        server.close(() => process.exit(0));
        server.closeAllConnections();
    });
}
