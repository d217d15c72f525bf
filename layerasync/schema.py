"""The Caffe messages we read, with Caffe's field names and defaults.

This is the subset of BVLC Caffe's ``caffe.proto`` that layerasync implements.
A field missing here is rejected by the reader with the list of known fields,
so a user never trains a net whose prototxt was silently half-read.
Fields that only select a Caffe engine or backend are accepted and ignored.
Integer fields have Caffe's types (int32, uint32, int64), which the reader
enforces: a negative ``pad`` or a ``num_output`` beyond 2**32 - 1 is a
parse error, as it is for Caffe's protobuf reader.
"""
from .proto import Field, Schema


def opt(kind, default=None, **kw):
    return Field(kind, default, **kw)


def rep(kind, **kw):
    return Field(kind, repeated=True, **kw)


def enum(values, default):
    return Field('enum', default, values=values.split())


def msg(schema):
    return Field('msg', message=schema)


def rep_msg(schema):
    return Field('msg', repeated=True, message=schema)


ENGINE = enum('DEFAULT CAFFE CUDNN', 'DEFAULT')

BlobShape = Schema('BlobShape', dim=rep('int64'))

FillerParameter = Schema(
    'FillerParameter',
    type=opt('str', 'constant'), value=opt('float', 0.0),
    min=opt('float', 0.0), max=opt('float', 1.0),
    mean=opt('float', 0.0), std=opt('float', 1.0), sparse=opt('int32', -1),
    variance_norm=enum('FAN_IN FAN_OUT AVERAGE', 'FAN_IN'))

NetStateRule = Schema(
    'NetStateRule', phase=enum('TRAIN TEST', None),
    min_level=opt('int32'), max_level=opt('int32'),
    stage=rep('str'), not_stage=rep('str'))

NetState = Schema('NetState', phase=enum('TRAIN TEST', 'TEST'),
                  level=opt('int32', 0), stage=rep('str'))

ParamSpec = Schema(
    'ParamSpec', name=opt('str', ''), share_mode=enum('STRICT PERMISSIVE', 'STRICT'),
    lr_mult=opt('float', 1.0), decay_mult=opt('float', 1.0))

TransformationParameter = Schema(
    'TransformationParameter', scale=opt('float', 1.0), mirror=opt('bool', False),
    crop_size=opt('uint32', 0), mean_file=opt('str', ''), mean_value=rep('float'),
    force_color=opt('bool', False), force_gray=opt('bool', False))

LossParameter = Schema(
    'LossParameter', ignore_label=opt('int32'),
    normalization=enum('FULL VALID BATCH_SIZE NONE', 'VALID'),
    normalize=opt('bool'))

AccuracyParameter = Schema('AccuracyParameter', top_k=opt('uint32', 1), axis=opt('int32', 1),
                           ignore_label=opt('int32'))

BatchNormParameter = Schema(
    'BatchNormParameter', use_global_stats=opt('bool'),
    moving_average_fraction=opt('float', 0.999), eps=opt('float', 1e-5))

ConcatParameter = Schema('ConcatParameter', axis=opt('int32', 1), concat_dim=opt('uint32'))

ConvolutionParameter = Schema(
    'ConvolutionParameter', num_output=opt('uint32'), bias_term=opt('bool', True),
    pad=rep('uint32'), kernel_size=rep('uint32'), stride=rep('uint32'), dilation=rep('uint32'),
    pad_h=opt('uint32'), pad_w=opt('uint32'), kernel_h=opt('uint32'), kernel_w=opt('uint32'),
    stride_h=opt('uint32'), stride_w=opt('uint32'), group=opt('uint32', 1),
    weight_filler=msg(FillerParameter), bias_filler=msg(FillerParameter),
    engine=ENGINE, axis=opt('int32', 1), force_nd_im2col=opt('bool', False),
    # An extension: how the convolution is computed (AUTO: by the layer's shape).
    algorithm=enum('AUTO IM2COL WINOGRAD', 'AUTO'))

DataParameter = Schema(
    'DataParameter', source=opt('str', ''), batch_size=opt('uint32', 0),
    rand_skip=opt('uint32', 0), backend=enum('LEVELDB LMDB', 'LEVELDB'),
    scale=opt('float', 1.0), mean_file=opt('str', ''), crop_size=opt('uint32', 0),
    mirror=opt('bool', False), prefetch=opt('uint32', 4))

EmbedParameter = Schema(
    'EmbedParameter', num_output=opt('uint32'), input_dim=opt('uint32'),
    bias_term=opt('bool', True), weight_filler=msg(FillerParameter),
    bias_filler=msg(FillerParameter))

BiasParameter = Schema('BiasParameter', axis=opt('int32', 1), num_axes=opt('int32', 1),
                       filler=msg(FillerParameter))

DropoutParameter = Schema('DropoutParameter', dropout_ratio=opt('float', 0.5),
                          scale_train=opt('bool', True))

EltwiseParameter = Schema(
    'EltwiseParameter', operation=enum('PROD SUM MAX', 'SUM'), coeff=rep('float'),
    stable_prod_grad=opt('bool', True))

FlattenParameter = Schema('FlattenParameter', axis=opt('int32', 1), end_axis=opt('int32', -1))

InnerProductParameter = Schema(
    'InnerProductParameter', num_output=opt('uint32'), bias_term=opt('bool', True),
    weight_filler=msg(FillerParameter), bias_filler=msg(FillerParameter),
    axis=opt('int32', 1), transpose=opt('bool', False))

InputParameter = Schema('InputParameter', shape=rep_msg(BlobShape))

# Extensions to Caffe's set, for Transformers (Caffe has no such layers).
LayerNormParameter = Schema('LayerNormParameter', eps=opt('float', 1e-5))

GELUParameter = Schema('GELUParameter', approximate=enum('NONE TANH', 'NONE'))

AttentionParameter = Schema(
    'AttentionParameter', num_heads=opt('uint32'), causal=opt('bool', False),
    dropout_ratio=opt('float', 0.0), weight_filler=msg(FillerParameter),
    bias_filler=msg(FillerParameter))

LRNParameter = Schema(
    'LRNParameter', local_size=opt('uint32', 5), alpha=opt('float', 1.0),
    beta=opt('float', 0.75), norm_region=enum('ACROSS_CHANNELS WITHIN_CHANNEL', 'ACROSS_CHANNELS'),
    k=opt('float', 1.0), engine=ENGINE)

PoolingParameter = Schema(
    'PoolingParameter', pool=enum('MAX AVE STOCHASTIC', 'MAX'),
    pad=opt('uint32', 0), pad_h=opt('uint32'), pad_w=opt('uint32'),
    kernel_size=opt('uint32'), kernel_h=opt('uint32'), kernel_w=opt('uint32'),
    stride=opt('uint32', 1), stride_h=opt('uint32'), stride_w=opt('uint32'),
    engine=ENGINE, global_pooling=opt('bool', False),
    round_mode=enum('CEIL FLOOR', 'CEIL'))

ReLUParameter = Schema('ReLUParameter', negative_slope=opt('float', 0.0), engine=ENGINE)

ReshapeParameter = Schema('ReshapeParameter', shape=msg(BlobShape),
                          axis=opt('int32', 0), num_axes=opt('int32', -1))

ScaleParameter = Schema(
    'ScaleParameter', axis=opt('int32', 1), num_axes=opt('int32', 1),
    filler=msg(FillerParameter), bias_term=opt('bool', False),
    bias_filler=msg(FillerParameter))

SigmoidParameter = Schema('SigmoidParameter', engine=ENGINE)
TanHParameter = Schema('TanHParameter', engine=ENGINE)

SliceParameter = Schema('SliceParameter', axis=opt('int32', 1), slice_point=rep('uint32'),
                        slice_dim=opt('uint32'))

SoftmaxParameter = Schema('SoftmaxParameter', axis=opt('int32', 1), engine=ENGINE)

LayerParameter = Schema(
    'LayerParameter',
    name=opt('str', ''), type=opt('str', ''), bottom=rep('str'), top=rep('str'),
    phase=enum('TRAIN TEST', None), loss_weight=rep('float'), param=rep_msg(ParamSpec),
    propagate_down=rep('bool'), include=rep_msg(NetStateRule), exclude=rep_msg(NetStateRule),
    transform_param=msg(TransformationParameter), loss_param=msg(LossParameter),
    accuracy_param=msg(AccuracyParameter), attention_param=msg(AttentionParameter),
    batch_norm_param=msg(BatchNormParameter), bias_param=msg(BiasParameter),
    concat_param=msg(ConcatParameter), convolution_param=msg(ConvolutionParameter),
    data_param=msg(DataParameter), dropout_param=msg(DropoutParameter),
    eltwise_param=msg(EltwiseParameter), embed_param=msg(EmbedParameter),
    flatten_param=msg(FlattenParameter), gelu_param=msg(GELUParameter),
    inner_product_param=msg(InnerProductParameter), input_param=msg(InputParameter),
    layer_norm_param=msg(LayerNormParameter), lrn_param=msg(LRNParameter),
    pooling_param=msg(PoolingParameter),
    relu_param=msg(ReLUParameter), reshape_param=msg(ReshapeParameter),
    scale_param=msg(ScaleParameter), sigmoid_param=msg(SigmoidParameter),
    slice_param=msg(SliceParameter), softmax_param=msg(SoftmaxParameter),
    tanh_param=msg(TanHParameter))

NetParameter = Schema(
    'NetParameter', name=opt('str', ''), input=rep('str'), input_shape=rep_msg(BlobShape),
    input_dim=rep('int32'), force_backward=opt('bool', False), state=msg(NetState),
    debug_info=opt('bool', False), layer=rep_msg(LayerParameter))

SolverParameter = Schema(
    'SolverParameter',
    net=opt('str', ''), net_param=msg(NetParameter),
    train_net=opt('str', ''), test_net=rep('str'),
    train_state=msg(NetState), test_state=rep_msg(NetState),
    test_iter=rep('int32'), test_interval=opt('int32', 0),
    test_compute_loss=opt('bool', False), test_initialization=opt('bool', True),
    base_lr=opt('float'), display=opt('int32', 0), average_loss=opt('int32', 1),
    max_iter=opt('int32'), iter_size=opt('int32', 1),
    lr_policy=opt('str', 'fixed'), gamma=opt('float'), power=opt('float'),
    # Extensions: a linear warm-up before any policy, and the floor of 'cosine'.
    warmup_iter=opt('int32', 0), min_lr=opt('float', 0.0),
    momentum=opt('float', 0.0), weight_decay=opt('float', 0.0),
    regularization_type=opt('str', 'L2'), stepsize=opt('int32'), stepvalue=rep('int32'),
    clip_gradients=opt('float', -1.0),
    snapshot=opt('int32', 0), snapshot_prefix=opt('str', ''), snapshot_diff=opt('bool', False),
    snapshot_format=enum('HDF5 BINARYPROTO', 'BINARYPROTO'),
    solver_mode=enum('CPU GPU', 'CPU'), device_id=opt('int32', 0),
    random_seed=opt('int64', -1), type=opt('str', 'SGD'),
    delta=opt('float', 1e-8), momentum2=opt('float', 0.999), rms_decay=opt('float', 0.99),
    debug_info=opt('bool', False), snapshot_after_train=opt('bool', True),
    solver_type=enum('SGD NESTEROV ADAGRAD RMSPROP ADADELTA ADAM', 'SGD'),
    layer_wise_reduce=opt('bool', True))
