/**
 * The `--predictions` file: per-image probabilities as CSV, `Image Index` (as given: a shard
 * key's `KEY.png` or an `--images` path) and the 14 classes, through the project's CSV writer, so
 * a name holding a comma, quote or newline stays one field and one that starts a formula
 * (`=HYPERLINK(…)`, `+1+1`, `-2+3`, `@SUM(1)`) arrives as text.
 * @module
 */
import { LABELS, NUM_CLASSES } from "../../config.ts";
import { formatCsv } from "../util/csv.ts";

/** CSV text of `names` and their probabilities (`probs`: images × 14, row-major). */
export function predictionsCsv(names: readonly string[], probs: ArrayLike<number>): string {
  return formatCsv([
    ["Image Index", ...LABELS],
    ...names.map((name, i) => [
      name,
      ...Array.from({ length: NUM_CLASSES }, (_, c) => probs[i * NUM_CLASSES + c]),
    ]),
  ]);
}
