// A heavy-tailed regression label (watch time) beside a click task, on the categorical
// generator. As the seed article advises for durations, the label is trained in log
// space (`transform = "log1p"`); predictions and the reported mse/mae come back in
// seconds, with the log-space figures beside them.

model synthetic_duration {
  data synthetic
  synthetic categorical

  feature user: categorical(hash = 2000) embed 8
  feature item: categorical(hash = 2000) embed 8
  feature position: dense

  layer cgc { experts 2 x [32] task_experts 2 }

  task watch: regression(label = "watch_seconds", transform = log1p) tower [16]
  task ctr: binary(label = "click") tower [16]

  train { adam(lr = 0.002) batch 512 epochs 5 seed 42 }
}
