// MMoE with DCN-v2 cross-network experts (Wang et al., WWW 2021) on UCI Census-Income
// (KDD): census_income_mmoe.toml with two cross layers below each expert's MLP,
// x_{i+1} = x_0 * (W_i x_i + b_i) + x_i on the 131-wide input. Everything else as there:
// MMoE on UCI Census-Income (KDD), the paper's group 1 (Ma et al., KDD 2018, section 6.3):
// task 1 predicts income > 50K, task 2 predicts "never married". Protocol from
// ../shared/data/census-income-kdd/README.md: train on the 199,523 training rows, select
// the epoch on paper-split/validation.gz, report on paper-split/test.gz. education,
// marital_stat, income_50k and instance_weight are not inputs.
//
// Dense columns: counts of money are log1p'd, age / num_emp / weeks_worked are z-scored
// with the training file's mean and standard deviation. Every other column is a
// categorical hashed into 1000 buckets ("?" is an ordinary value).

model census_mmoe_cross {
  data csv(
    // Paths are relative to this file's folder.
    train = ["../../shared/data/census-income-kdd/census-income.data.gz"],
    validation = "../../shared/data/census-income-kdd/paper-split/validation.gz",
    test = "../../shared/data/census-income-kdd/paper-split/test.gz",
    delimiter = ",",  // the files are comma + space; fields are trimmed
    header = false,
    columns = [
      "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
      "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race",
      "hisp_origin", "sex", "union_member", "unemp_reason", "full_or_part_emp",
      "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
      "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
      "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same",
      "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father", "country_mother",
      "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
      "weeks_worked", "year", "income_50k",
    ],
  )

  feature age: dense(transform = zscore, mean = 34.494, std = 22.311)
  feature class_worker: categorical(hash = 1000) embed 4
  feature det_ind_code: categorical(hash = 1000) embed 4
  feature det_occ_code: categorical(hash = 1000) embed 4
  feature wage_per_hour: dense(transform = log1p)
  feature hs_college: categorical(hash = 1000) embed 4
  feature major_ind_code: categorical(hash = 1000) embed 4
  feature major_occ_code: categorical(hash = 1000) embed 4
  feature race: categorical(hash = 1000) embed 4
  feature hisp_origin: categorical(hash = 1000) embed 4
  feature sex: categorical(hash = 1000) embed 4
  feature union_member: categorical(hash = 1000) embed 4
  feature unemp_reason: categorical(hash = 1000) embed 4
  feature full_or_part_emp: categorical(hash = 1000) embed 4
  feature capital_gains: dense(transform = log1p)
  feature capital_losses: dense(transform = log1p)
  feature stock_dividends: dense(transform = log1p)
  feature tax_filer_stat: categorical(hash = 1000) embed 4
  feature region_prev_res: categorical(hash = 1000) embed 4
  feature state_prev_res: categorical(hash = 1000) embed 4
  feature det_hh_fam_stat: categorical(hash = 1000) embed 4
  feature det_hh_summ: categorical(hash = 1000) embed 4
  feature mig_chg_msa: categorical(hash = 1000) embed 4
  feature mig_chg_reg: categorical(hash = 1000) embed 4
  feature mig_move_reg: categorical(hash = 1000) embed 4
  feature mig_same: categorical(hash = 1000) embed 4
  feature mig_prev_sunbelt: categorical(hash = 1000) embed 4
  feature num_emp: dense(transform = zscore, mean = 1.956, std = 2.365)
  feature fam_under_18: categorical(hash = 1000) embed 4
  feature country_father: categorical(hash = 1000) embed 4
  feature country_mother: categorical(hash = 1000) embed 4
  feature country_self: categorical(hash = 1000) embed 4
  feature citizenship: categorical(hash = 1000) embed 4
  feature own_or_self: categorical(hash = 1000) embed 4
  feature vet_question: categorical(hash = 1000) embed 4
  feature vet_benefits: categorical(hash = 1000) embed 4
  feature weeks_worked: dense(transform = zscore, mean = 23.175, std = 24.411)
  feature year: categorical(hash = 1000) embed 4

  layer mmoe { experts 8 x [16] relu cross 2 }

  task income: binary(label = "income_50k" == "50000+.") tower [8] weight 1.0
  task never_married: binary(label = "marital_stat" == "Never married") tower [8] weight 1.0

  train { adam(lr = 0.001) batch 512 epochs 10 seed 42 }
}
