/**
 * Project-wide defaults, mirroring the original tool's `config.py`.
 * Every script reads its defaults from here; flags override them.
 * @module
 */

/** The 14 thorax pathologies of NIH ChestX-ray14, in the original tool's order. */
export const LABELS = [
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
] as const;
export type Label = typeof LABELS[number];
export const NUM_CLASSES = LABELS.length;

/** Columns of the label CSVs: the image file name, then the 14 labels. */
export const USE_COLUMNS = ["Image Index", ...LABELS] as const;

export const RANDOM_SEED = 42;
/** Side of the square images stored in the shards. */
export const DATASET_IMAGE_SIZE = 256;
/** Side of the square images the network sees. */
export const FINAL_IMAGE_SIZE = 224;
export const TRAIN_VAL_TEST_RATIO = [0.7, 0.1, 0.2] as const;
export const SHARD_SIZE = 1000;
export const SHUFFLE_BUFFER = 1000;

/** Input and output locations, relative to the working directory. */
export const DATA_DIR = "data";
export const ORIGINAL_DATA_DIR = `${DATA_DIR}/original_data`;
export const IMAGE_DIR = `${ORIGINAL_DATA_DIR}/images`;
export const META_DATA_DIR = `${ORIGINAL_DATA_DIR}/meta_data`;
export const META_FILE_NAME = "Data_Entry_2017_v2020.csv";
export const META_FILE = `${META_DATA_DIR}/${META_FILE_NAME}`;
export const TRAIN_VAL_LIST_NAME = "train_val_list.txt";
export const TEST_LIST_NAME = "test_list.txt";
export const LABELS_DIR = `${DATA_DIR}/labels`;
export const DATASET_DIR = `${DATA_DIR}/datasets`;
export const SAVE_DIR = `${DATA_DIR}/saved_models`;
/** Shard names: `${SHARD_PREFIX}_${subset}_${index:03d}.tar`. */
export const SHARD_PREFIX = "ChestXray14";
export const SUBSETS = ["train", "val", "test"] as const;
export type Subset = typeof SUBSETS[number];
export const labelsFileName = (subset: Subset): string => `${subset}_labels.csv`;

/** Training defaults (the original's `config.py`). */
export const BATCH_SIZE = 8;
export const NUM_WORKERS = 1;
export const NUM_EPOCHS = 8;
export const LEARNING_RATE = 0.001;
export const SCHEDULER_FACTOR = 0.1;
export const SCHEDULER_PATIENCE = 0;
/** Number of images per subset with `-d/--debug`. */
export const DEBUG_SIZES = { train: 1280, val: 1280, test: 1280 } as const;

/** ImageNet normalisation, as torchvision's pretrained models expect. */
export const NORM_MEAN = [0.485, 0.456, 0.406] as const;
export const NORM_STD = [0.229, 0.224, 0.225] as const;
