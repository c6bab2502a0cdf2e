/**
 * ReduceLROnPlateau with PyTorch's semantics (mode "min", relative threshold 1e-4,
 * cooldown 0, min_lr 0, eps 1e-8): the learning rate is multiplied by `factor` once the
 * monitored loss has not improved for more than `patience` epochs.
 * @module
 */

export interface PlateauOptions {
  factor: number;
  patience: number;
  threshold?: number;
  cooldown?: number;
  minLr?: number;
  eps?: number;
}

/** What a scheduler needs to continue: torch's `state_dict()` fields that change. */
export interface PlateauState {
  lr: number;
  best: number | null;
  num_bad_epochs: number;
  cooldown_counter?: number;
}

/** Learning-rate scheduler on a plateau of a minimised metric (validation loss). */
export class ReduceLROnPlateau {
  lr: number;
  best = Infinity;
  numBadEpochs = 0;
  #cooldownCounter = 0;
  readonly #opts: Required<PlateauOptions>;

  constructor(lr: number, opts: PlateauOptions) {
    this.lr = lr;
    this.#opts = { threshold: 1e-4, cooldown: 0, minLr: 0, eps: 1e-8, ...opts };
  }

  /** Records one epoch's metric; returns the new learning rate when it was lowered, else null. */
  step(metric: number): number | null {
    const { factor, patience, threshold, cooldown, minLr, eps } = this.#opts;
    if (metric < this.best * (1 - threshold)) {
      this.best = metric;
      this.numBadEpochs = 0;
    } else {
      this.numBadEpochs++;
    }
    if (this.#cooldownCounter > 0) {
      this.#cooldownCounter--;
      this.numBadEpochs = 0;
    }
    if (this.numBadEpochs > patience) {
      this.#cooldownCounter = cooldown;
      this.numBadEpochs = 0;
      const newLr = Math.max(this.lr * factor, minLr);
      if (this.lr - newLr > eps) {
        this.lr = newLr;
        return newLr;
      }
    }
    return null;
  }

  /** State for a results file or a resumed run. */
  toJSON(): PlateauState {
    return {
      lr: this.lr,
      best: Number.isFinite(this.best) ? this.best : null,
      num_bad_epochs: this.numBadEpochs,
      cooldown_counter: this.#cooldownCounter,
    };
  }

  /** Continues from a `toJSON()` value (a resumed run). */
  restore(state: PlateauState): void {
    this.lr = state.lr;
    this.best = state.best ?? Infinity;
    this.numBadEpochs = state.num_bad_epochs;
    this.#cooldownCounter = state.cooldown_counter ?? 0;
  }
}
