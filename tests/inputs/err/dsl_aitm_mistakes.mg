model m {
  feature a: categorical(hash = 100) embed 8
  layer shared_bottom { units [8] }
  task ctr: binary(label = click) tower [4]
  task cvr: binary(label = buy, transfer_from = "cvr") tower [4]
  task ctcvr: binary(label = buy, calibration = 0.6) tower [4]
  task buy: binary(label = buy, transfer_from = "ctr", calibration = -2) tower [4]
  task spend: regression(label = spend, transfer_from = "ctr") tower [4]
}
