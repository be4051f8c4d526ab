// ESMM (Ma et al., SIGIR 2018) on the funnel generator: impressions -> clicks ->
// conversions, where the features that drive clicks also drive conversions.
// CTR is trained on every impression; CVR has no loss of its own (weight 0) and learns
// only through CTCVR = CTR x CVR, also trained on every impression. CVR is scored
// against `would_convert`, every impression's latent conversion, which only a generator
// can know: the CVR AUC over the entire impression space that ESMM is about.
// The naive baseline is synthetic_esmm_naive.toml.

model synthetic_esmm {
  data synthetic(test_fraction = 0.1)
  synthetic funnel(rows = 200000)

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 2000) embed 8
  feature context: categorical(hash = 200) embed 8
  feature price: dense

  layer shared_bottom { units [64] }

  task ctr: binary(label = "click") tower [32]
  task cvr: binary(label = "would_convert") tower [32] weight 0.0
  task ctcvr: binary(label = "conversion") product(ctr, cvr)

  train { adam(lr = 0.002) batch 1024 epochs 5 seed 42 select "ctcvr.auc" }
}
