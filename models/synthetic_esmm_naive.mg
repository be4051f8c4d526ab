// The naive CVR baseline ESMM is compared against (Ma et al., SIGIR 2018, section 4):
// the same network and data as synthetic_esmm.toml, but CVR is trained directly, on
// clicked impressions only (`only_where = "click"`: the other rows add no loss).
// Its metrics are then counted on clicked rows too; scripts/reproduce_esmm.sh scores
// both models' CVR over every impression.

model synthetic_esmm_naive {
  data synthetic(test_fraction = 0.1)
  synthetic funnel(rows = 200000)

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 2000) embed 8
  feature context: categorical(hash = 200) embed 8
  feature price: dense

  layer shared_bottom { units [64] }

  task ctr: binary(label = "click") tower [32]
  task cvr: binary(label = "would_convert", only_where = "click") tower [32]

  train { adam(lr = 0.002) batch 1024 epochs 5 seed 42 select "cvr.auc" }
}
