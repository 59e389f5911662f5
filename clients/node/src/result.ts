// What a successful call returns: the vendor's HTTP answer as the sidecar
// passed it on, already scrubbed of any echo of the credential (`redacted`
// says whether anything was replaced). The body stays bytes, because
// vendors answer with anything; text() and json() decode it on demand.

/** Content types json() accepts: application/json and any "+json" type. */
const JSON_TYPE = /^\s*(?:application|text)\/(?:[A-Za-z0-9.!#$&^_-]+\+)?json\s*(?:;|$)/i;

/** The fields of a ToolResult as the sidecar sent them. */
export interface ToolResultInit {
  status: number;
  contentType: string;
  body: Buffer;
  headers: Record<string, string>;
  redacted: boolean;
}

/** The vendor's scrubbed answer to one tool call. */
export class ToolResult {
  /** The vendor's HTTP status (the call succeeded even when this is 4xx/5xx). */
  readonly status: number;
  readonly contentType: string;
  readonly body: Buffer;
  /** Response headers, names lower-case as the sidecar sends them. */
  readonly headers: Record<string, string>;
  /** True when the sidecar replaced an echo of the secret with [REDACTED]. */
  readonly redacted: boolean;

  constructor(init: ToolResultInit) {
    this.status = init.status;
    this.contentType = init.contentType;
    this.body = init.body;
    this.headers = init.headers;
    this.redacted = init.redacted;
  }

  /** True for a 2xx HTTP status. */
  get ok(): boolean {
    return this.status >= 200 && this.status < 300;
  }

  /** True when the content type says the body is JSON. */
  get isJson(): boolean {
    return JSON_TYPE.test(this.contentType);
  }

  /** The body decoded as UTF-8. */
  text(): string {
    return this.body.toString("utf8");
  }

  /**
   * The body parsed as JSON; throws a TypeError when the content type is not
   * JSON and a SyntaxError when the body is not valid JSON.
   */
  json<T = unknown>(): T {
    if (!this.isJson) {
      throw new TypeError(
        `the tool answered "${this.contentType || "no content type"}", not JSON: use text() or body`,
      );
    }
    return JSON.parse(this.text()) as T;
  }

  /**
   * The result as a model should see it: parsed JSON when the body is JSON,
   * else the text, with the HTTP status. For a function-calling loop's
   * "tool" message.
   */
  toModelContent(): string {
    let body: unknown = this.text();
    if (this.isJson) {
      try {
        body = JSON.parse(body as string);
      } catch {
        // Keep the text: a vendor that mislabels its answer is still heard.
      }
    }
    return JSON.stringify({ status: this.status, body });
  }
}
