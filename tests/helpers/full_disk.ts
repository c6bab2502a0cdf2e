/**
 * Runs preprocessing (the real `preprocess` of preprocess_data.ts, with the script's error
 * handling) with its first train shard's temporary file pointing at /dev/full, a device whose
 * every write fails with ENOSPC: a full disk, without filling one (issue 25, extra). This
 * process's temporary names carry its pid, so the link is made here; /dev/full needs `-A`.
 *
 *   deno run -A tests/helpers/full_disk.ts IMAGE_DIR META_FILE DATASET_DIR LABELS_DIR
 * @module
 */
import { preprocess } from "../../preprocess_data.ts";
import { runMain } from "../../lib/util/errors.ts";

const [imageDir, metaFile, datasetDir, labelsDir] = Deno.args;
await Deno.mkdir(datasetDir, { recursive: true });
await Deno.symlink("/dev/full", `${datasetDir}/.ChestXray14_train_000.tar.${Deno.pid}.tmp`);
await runMain(async () => {
  await preprocess({
    seed: 42,
    subsetSize: null,
    imageDir,
    metaFile,
    labelsDir,
    datasetDir,
    imageSize: 32,
    shardSize: 5,
    officialSplit: false,
    workers: 1,
    skipMissing: false,
    quiet: true,
  });
}, []);
