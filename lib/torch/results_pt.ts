/**
 * The original tool's `<stamp>_results.pt`: `torch.save` of a dict of numpy float64 values
 * (per-epoch arrays such as 'training loss', scalars such as 'best validation loss'), written
 * beside our `_results.json` so that scripts written for the original keep working.
 * @module
 */
import { writeFileAtomic } from "../util/atomic_file.ts";
import { Pickler } from "./torch_checkpoint.ts";
import { writeZip } from "./zip_store.ts";

/** Keys in order; a Float64Array becomes a 1-D `np.ndarray`, a number an `np.float64`. */
export type ResultsPt = Array<[string, Float64Array | number]>;

/** The bytes `torch.save(dict)` (zip format, PyTorch 1.13) writes for `results`. */
export function encodeResultsPt(results: ResultsPt): Uint8Array {
  const p = new Pickler();
  p.proto();
  p.emptyDict();
  p.setItems(results.map(([k, v]) => [
    k,
    () => typeof v === "number" ? p.float64Scalar(v) : p.float64Array(v),
  ]));
  p.stop();
  return writeZip([
    { name: "archive/data.pkl", data: p.bytes() },
    { name: "archive/version", data: new TextEncoder().encode("3\n") },
  ]);
}

/** Writes {@link encodeResultsPt} of `results` to `path` atomically. */
export async function writeResultsPt(path: string, results: ResultsPt): Promise<void> {
  await writeFileAtomic(path, encodeResultsPt(results));
}
