// AITM (Xi et al., KDD 2021) on the funnel generator of synthetic_esmm.mg: the same
// features, rows and shared bottom. The conversion task's tower attends to the click
// task's (`transfer_from`): the click tower's last hidden vector, through an info
// layer, and the conversion tower's own are the two items of a self-attention whose
// output feeds the conversion output layer. The calibration loss (weight 0.6, the
// paper's) adds the batch mean of max(p_conversion - p_click, 0): a purchase is never
// likelier than the click before it. CVR is then p_conversion / p_click;
// scripts/reproduce_esmm.sh scores it beside ESMM and the naive CVR model.

model synthetic_aitm {
  data synthetic(test_fraction = 0.1)
  synthetic funnel(rows = 200000)

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 2000) embed 8
  feature context: categorical(hash = 200) embed 8
  feature price: dense

  layer shared_bottom { units [64] }

  task ctr: binary(label = "click") tower [32]
  task ctcvr: binary(label = "conversion", transfer_from = "ctr", calibration = 0.6) tower [32]

  train { adam(lr = 0.002) batch 1024 epochs 5 seed 42 select "ctcvr.auc" }
}
