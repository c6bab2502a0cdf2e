/**
 * Adam with PyTorch's exact update (torch.optim.Adam, no weight decay, no amsgrad):
 * m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
 * p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε).
 * tfjs's AdamOptimizer places ε differently; owning the update keeps the numerics of the
 * original and makes the state easy to save and the learning rate easy to change.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

export interface AdamOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** Adam optimiser over named variables. */
export class Adam {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  step = 0;
  readonly #m = new Map<string, tf.Variable>();
  readonly #v = new Map<string, tf.Variable>();

  constructor(opts: AdamOptions) {
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
  }

  /**
   * Applies one update to `variables` from `grads`, keyed by variable name as
   * `tf.variableGrads` returns them. Grads are not disposed.
   */
  apply(variables: Iterable<tf.Variable>, grads: Record<string, tf.Tensor>): void {
    this.step++;
    const bc1 = 1 - this.beta1 ** this.step;
    const bc2 = 1 - this.beta2 ** this.step;
    const stepSize = this.lr / bc1;
    const sqrtBc2 = Math.sqrt(bc2);
    for (const variable of variables) {
      const name = variable.name;
      const g = grads[name];
      if (!g) continue;
      let m = this.#m.get(name), v = this.#v.get(name);
      if (!m || !v) {
        m = tf.tidy(() => tf.variable(tf.zerosLike(variable), false));
        v = tf.tidy(() => tf.variable(tf.zerosLike(variable), false));
        this.#m.set(name, m);
        this.#v.set(name, v);
      }
      const [mm, vv] = [m, v];
      tf.tidy(() => {
        const newM = tf.add(tf.mul(mm, this.beta1), tf.mul(g, 1 - this.beta1));
        const newV = tf.add(tf.mul(vv, this.beta2), tf.mul(tf.square(g), 1 - this.beta2));
        const denom = tf.add(tf.div(tf.sqrt(newV), sqrtBc2), this.eps);
        variable.assign(tf.sub(variable, tf.mul(tf.div(newM, denom), stepSize)));
        mm.assign(newM);
        vv.assign(newV);
      });
    }
  }

  /** Frees the moment estimates. */
  dispose(): void {
    for (const t of [...this.#m.values(), ...this.#v.values()]) t.dispose();
    this.#m.clear();
    this.#v.clear();
  }
}
