// PLE with two extraction levels on the MMoE paper's synthetic data: each level has
// 2 shared experts and 3 per task of 16 units (8 experts per level, as MMoE's 8); the
// first level's shared gate feeds the second level's shared experts. Towers of 8.

model synthetic_ple {
  data synthetic(test_fraction = 0.1)

  feature x: dense(width = 100)

  layer cgc { experts 2 x [16] relu task_experts 3 }
  layer cgc { experts 2 x [16] relu task_experts 3 }

  task y1: regression(label = "y1") tower [8]
  task y2: regression(label = "y2") tower [8]

  train { adam batch 256 epochs 30 seed 42 }
}
