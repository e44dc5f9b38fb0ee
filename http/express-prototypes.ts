import { IncomingMessage, ServerResponse, type RequestListener } from 'node:http';

/** An Express application: a request listener with the prototypes it gives requests and responses. */
export type ExpressApp = RequestListener & {
  request: IncomingMessage;
  response: ServerResponse;
};

export interface MessageConstructors {
  IncomingMessage: typeof IncomingMessage;
  ServerResponse: typeof ServerResponse;
}

const made = new WeakMap<ExpressApp, MessageConstructors>();

/**
 * Request and response classes for `http.createServer` whose objects are born with the prototypes
 * Express gives them, so that Express's own `Object.setPrototypeOf` on each of them changes nothing.
 *
 * Why: Express 5 calls `Object.setPrototypeOf(req, app.request)` (and the same for `res`) on every
 * request. After that call V8 gives every property added to the object (by Express, its router,
 * body-parser and Pulse) a hidden class of its own, per object: every property access on the
 * request path turns megamorphic, and every open stream keeps a dozen private hidden classes
 * alive. With the prototype already in place, every request shares one set of shapes
 * (docs/request-cost.md has the cost).
 *
 * They are subclasses (not plain functions given a prototype) because V8 sizes a subclass's
 * objects like its base class's; a plain function's objects turned into slow dictionaries. Their
 * prototypes inherit from the app's, and become the app's `request` and `response`, so whatever
 * Express or a middleware defines there is still found.
 */
export function expressBornConstructors(app: ExpressApp): MessageConstructors {
  const known = made.get(app);
  if (known) return known;
  class ExpressRequest extends IncomingMessage {}
  class ExpressResponse extends ServerResponse {}
  Object.setPrototypeOf(ExpressRequest.prototype, app.request);
  Object.setPrototypeOf(ExpressResponse.prototype, app.response);
  app.request = ExpressRequest.prototype;
  app.response = ExpressResponse.prototype;
  const constructors: MessageConstructors = {
    IncomingMessage: ExpressRequest,
    // Node's typings make ServerResponse generic in its request type; this one serves any.
    ServerResponse: ExpressResponse as typeof ServerResponse,
  };
  made.set(app, constructors);
  return constructors;
}
