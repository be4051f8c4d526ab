// ESMM on the Ali-CCP sample (Taobao impressions with clicks and purchases; 100 training
// rows from torch-rechub's examples, see ../shared/data/samples/torch-rechub/README.md).
// A smoke test of reading the real column layout, not a benchmark: the training sample
// holds 7 clicks and 1 purchase. Categorical ids are hashed; the D* columns are dense.
// CVR (purchase given click) has no loss of its own and learns through CTCVR = CTR x CVR;
// it is scored on clicked rows (`only_where`).

model aliccp_esmm {
  data csv(
    train = ["../../shared/data/samples/torch-rechub/ali_ccp_train_sample.csv"],
    validation = "../../shared/data/samples/torch-rechub/ali_ccp_val_sample.csv",
    test = "../../shared/data/samples/torch-rechub/ali_ccp_test_sample.csv",
  )

  feature f101: categorical(hash = 1000) embed 8 column "101"
  feature f121: categorical(hash = 1000) embed 8 column "121"
  feature f122: categorical(hash = 1000) embed 8 column "122"
  feature f124: categorical(hash = 1000) embed 8 column "124"
  feature f125: categorical(hash = 1000) embed 8 column "125"
  feature f126: categorical(hash = 1000) embed 8 column "126"
  feature f127: categorical(hash = 1000) embed 8 column "127"
  feature f128: categorical(hash = 1000) embed 8 column "128"
  feature f129: categorical(hash = 1000) embed 8 column "129"
  feature f205: categorical(hash = 1000) embed 8 column "205"
  feature f206: categorical(hash = 1000) embed 8 column "206"
  feature f207: categorical(hash = 1000) embed 8 column "207"
  feature f210: categorical(hash = 1000) embed 8 column "210"
  feature f216: categorical(hash = 1000) embed 8 column "216"
  feature f508: categorical(hash = 1000) embed 8 column "508"
  feature f509: categorical(hash = 1000) embed 8 column "509"
  feature f702: categorical(hash = 1000) embed 8 column "702"
  feature f853: categorical(hash = 1000) embed 8 column "853"
  feature f301: categorical(hash = 1000) embed 8 column "301"
  feature f109_14: categorical(hash = 1000) embed 8 column "109_14"
  feature f110_14: categorical(hash = 1000) embed 8 column "110_14"
  feature f127_14: categorical(hash = 1000) embed 8 column "127_14"
  feature f150_14: categorical(hash = 1000) embed 8 column "150_14"
  feature d109_14: dense column "D109_14"
  feature d110_14: dense column "D110_14"
  feature d127_14: dense column "D127_14"
  feature d150_14: dense column "D150_14"
  feature d508: dense column "D508"
  feature d509: dense column "D509"
  feature d702: dense column "D702"
  feature d853: dense column "D853"

  layer shared_bottom { units [64] }

  task ctr: binary(label = "click") tower [16]
  task cvr: binary(label = "purchase", only_where = "click") tower [16] weight 0.0
  task ctcvr: binary(label = "purchase") product(ctr, cvr)

  train { adam batch 32 epochs 2 seed 42 }
}
