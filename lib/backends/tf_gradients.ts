/**
 * Gradient registration. `@tensorflow/tfjs-core`'s published bundles register no gradient
 * functions (the per-file ESM sources that do cannot be loaded by Deno's npm resolution); the
 * union package `@tensorflow/tfjs` registers all of tfjs's maintained gradients when it loads.
 * Importing this module is that registration: a global, idempotent side effect, which is how
 * tfjs registers kernels and gradients.
 * @module
 */
import "@tensorflow/tfjs";
