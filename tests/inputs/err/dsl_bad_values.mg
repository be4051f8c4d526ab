model m {
  data csv(train = [1, 2], header = "no")
  synthetic mmoe(rows = -5, correlation = "high")
  feature a: categorical(hash = 1.5) embed 8
  task ctr: binary(label = click)
}
