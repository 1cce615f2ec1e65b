// Preloaded into the official conformance suite (`node --import bearer.mjs ...`, run in the
// suite's directory) for its run over TLS with a bearer token. The suite itself is unchanged;
// this module makes its HTTP client behave like an OAuth client of a TLS server:
// - every request carries `Authorization: Bearer $MCPD_TOKEN` (unless it has one);
// - the server certificate is verified against the URL's host ($MCPD_TLS_NAME), also when a
//   scenario sends another `Host` header on purpose (the DNS-rebinding probe): without this,
//   Node would check the certificate against that header and never reach the server.
// The test CA is trusted through NODE_EXTRA_CA_CERTS.
//
// Both the suite's raw requests (the `undici` package) and the SDK's transport (Node's fetch,
// undici inside) go through undici's global dispatcher, which this module replaces. A few
// scenarios write requests with `http.request` to the server's port ($MCPD_PORT; they assume
// plaintext): those become `https.request`, with the token.
import http from "node:http";
import https from "node:https";
import { createRequire } from "node:module";

const token = process.env.MCPD_TOKEN;
const servername = process.env.MCPD_TLS_NAME;
const port = process.env.MCPD_PORT;
if (!token || !servername || !port) {
  throw new Error("bearer.mjs: MCPD_TOKEN, MCPD_TLS_NAME and MCPD_PORT must be set");
}
const undici = createRequire(`${process.cwd()}/`)("undici");

function withToken(headers) {
  const value = `Bearer ${token}`;
  if (headers == null) {
    return { authorization: value };
  }
  if (Array.isArray(headers)) {
    // Flat [name, value, name, value, ...].
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === "authorization") return headers;
    }
    return [...headers, "authorization", value];
  }
  if (typeof headers[Symbol.iterator] === "function" && typeof headers !== "string") {
    const list = [...headers];
    if (list.some(([k]) => String(k).toLowerCase() === "authorization")) return list.flat();
    return [...list.flat(), "authorization", value];
  }
  if (Object.keys(headers).some((k) => k.toLowerCase() === "authorization")) return headers;
  return { ...headers, authorization: value };
}

const agent = new undici.Agent({ connect: { servername } }).compose(
  (dispatch) => (opts, handler) =>
    dispatch({ ...opts, servername, headers: withToken(opts.headers) }, handler),
);
undici.setGlobalDispatcher(agent);

const plainRequest = http.request;
http.request = function request(options, ...rest) {
  if (options && typeof options === "object" && !(options instanceof URL) && String(options.port) === port) {
    return https.request(
      { ...options, protocol: "https:", servername, headers: withToken(options.headers) },
      ...rest,
    );
  }
  return plainRequest.call(this, options, ...rest);
};
