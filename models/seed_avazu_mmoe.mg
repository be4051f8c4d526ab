// The seed model: MMoE over eleven hashed Avazu fields with 16-dim embeddings and the
// adid x device_id product cross concatenated with them; 8 experts of 4 units, two
// binary tasks, towers Dense(8, relu) -> Dense(1, sigmoid), BCE, loss weights 1/1, Adam.

model seed_avazu_mmoe {
  data synthetic
  synthetic categorical(rows = 200000, seed = 7)

  feature adid: categorical(hash = 10000) embed 16 column "id"
  feature site_id: categorical(hash = 10000) embed 16
  feature site_domain: categorical(hash = 10000) embed 16
  feature site_category: categorical(hash = 10000) embed 16
  feature app_id: categorical(hash = 10000) embed 16
  feature app_domain: categorical(hash = 10000) embed 16
  feature app_category: categorical(hash = 1000) embed 16
  feature device_id: categorical(hash = 1000) embed 16
  feature device_ip: categorical(hash = 10000) embed 16
  feature device_type: categorical(hash = 10) embed 16
  feature device_conn_type: categorical(hash = 10) embed 16
  cross adid_x_device_id = product(adid, device_id)

  layer mmoe { experts 8 x [4] relu }

  task click: binary(label = "click") tower [8] weight 1.0
  task banner_top: binary(label = "banner_pos" == "1") tower [8] weight 1.0

  train { adam batch 512 epochs 3 seed 42 }
}
