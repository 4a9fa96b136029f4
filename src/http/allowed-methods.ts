/**
 * The methods each route path answers, so that a known path asked with another method
 * answers `405` with `Allow` instead of `404`. Fed by fastify's `onRoute` hook.
 * @module
 */

/** Route paths (`/v1/sessions/:key/commit`, `/docs/*`) and the methods they answer. */
export class AllowedMethods {
  readonly #routes: { readonly pattern: RegExp; readonly methods: Set<string> }[] = [];

  /** Records `methods` for the route path `url`. */
  add(url: string, methods: string | readonly string[]): void {
    const source = `^${url
      .split(/(:[A-Za-z0-9_]+|\*)/)
      .map((part) => (part === '*' ? '.*' : part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
      .join('')}$`;
    let route = this.#routes.find((r) => r.pattern.source === source);
    if (!route) {
      route = { pattern: new RegExp(source), methods: new Set() };
      this.#routes.push(route);
    }
    for (const method of typeof methods === 'string' ? [methods] : methods) route.methods.add(method.toUpperCase());
  }

  /** The methods of every route matching `path` (a raw URL path), sorted; none for an unknown path. */
  for(path: string): string[] {
    const methods = new Set<string>();
    for (const route of this.#routes) if (route.pattern.test(path)) for (const method of route.methods) methods.add(method);
    return [...methods].sort();
  }
}
