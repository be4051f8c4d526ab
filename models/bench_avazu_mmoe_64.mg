// The seed model's inputs at the benchmark shape used to compare with PyTorch
// (../shared/bench/torch_mmoe.py's defaults): eleven tables of 10,000 x 16, 8 experts
// x 64 units, towers of 32. `scripts/bench_vs_torch.sh` runs both sides.

model bench_avazu_mmoe_64 {
  // Trains on the built-in categorical generator; the feature columns are Avazu's, so
  // the same spec reads ../shared/data/samples/avazu_sample.txt with --data or predict.
  data synthetic
  synthetic categorical(rows = 200000, seed = 7)

  // Avazu has no adid column: its `id` (the ad impression id) stands in.
  feature adid: categorical(hash = 10000) embed 16 column "id"
  feature site_id: categorical(hash = 10000) embed 16
  feature site_domain: categorical(hash = 10000) embed 16
  feature site_category: categorical(hash = 10000) embed 16
  feature app_id: categorical(hash = 10000) embed 16
  feature app_domain: categorical(hash = 10000) embed 16
  feature app_category: categorical(hash = 10000) embed 16
  feature device_id: categorical(hash = 10000) embed 16
  feature device_ip: categorical(hash = 10000) embed 16
  feature device_type: categorical(hash = 10000) embed 16
  feature device_conn_type: categorical(hash = 10000) embed 16
  cross adid_x_device_id = product(adid, device_id)

  layer mmoe { experts 8 x [64] relu }

  task click: binary(label = "click") tower [32] weight 1.0
  // The Avazu sample has one label; the second task reads banner_pos == "1" so that
  // both tasks have a real label there. On two-label data, point `label` at it.
  task banner_top: binary(label = "banner_pos" == "1") tower [32] weight 1.0

  train { adam batch 512 epochs 3 seed 42 }
}
