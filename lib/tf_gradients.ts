/**
 * Gradient registration. `@tensorflow/tfjs-core`'s published bundles register no gradient
 * functions (the per-file ESM sources that do cannot be loaded by Deno's npm resolution); the
 * union package `@tensorflow/tfjs` registers all of tfjs's maintained gradients when it loads.
 * Loaded lazily by `forward` in training mode, so evaluation-only scripts never pay for it.
 * @module
 */
import "@tensorflow/tfjs";

/** Gradients are registered by this module's import of `@tensorflow/tfjs`; kept as the hook. */
export function registerTrainingGradients(): void {}
